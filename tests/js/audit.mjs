// The GraphQL-over-HTTP audit suite (npm `graphql-http`) against a node.
// Usage: node audit.mjs <url> [token]
// Prints one line per audit that is not `ok` and a JSON summary as the
// last line: {"ok":N,"notice":N,"warn":N,"error":N,"failed":[...]}.
// Exit status 0 whatever the result: the Rust test decides what passes.
import { auditServer } from 'graphql-http';

const [url, token] = process.argv.slice(2);
if (!url) {
  console.error('usage: node audit.mjs <url> [token]');
  process.exit(2);
}
// With a token, every request the suite makes carries it.
const fetchFn = (input, init = {}) => {
  if (!token) return fetch(input, init);
  const headers = new Headers(init.headers);
  headers.set('authorization', `Bearer ${token}`);
  return fetch(input, { ...init, headers });
};
const results = await auditServer({ url, fetchFn });
const summary = { ok: 0, notice: 0, warn: 0, error: 0, failed: [] };
for (const result of results) {
  summary[result.status] += 1;
  if (result.status !== 'ok') {
    let reason = result.reason;
    summary.failed.push({ id: result.id, name: result.name, status: result.status, reason });
    console.log(`${result.status}: ${result.name}: ${reason}`);
  }
}
console.log(JSON.stringify(summary));
