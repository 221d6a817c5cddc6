// GraphiQL in headless Chromium (Debian `chromium`, driven by the pinned
// playwright-core), with every request to anything but the node blocked:
// loads the page without credentials, enters a token, runs a query and a
// subscription, and saves a screenshot.
//
// Usage: node graphiql.mjs <node base url> <token> <screenshot.png> <user-data-dir>
// Env: CHROMIUM (default /usr/bin/chromium).
// Prints one JSON object as the last line: the query's result as GraphiQL
// shows it, the subscription's first event, what was blocked, what the
// page sent (Authorization headers, connection_init payload), and the
// token as kept in sessionStorage. The Rust test asserts on it.
import { chromium } from 'playwright-core';

const [base, token, screenshot, userDataDir] = process.argv.slice(2);
if (!base || !token || !screenshot || !userDataDir) {
  console.error('usage: node graphiql.mjs <base url> <token> <screenshot.png> <user-data-dir>');
  process.exit(2);
}
const origin = new URL(base).origin;
const DEADLINE_MS = 30000;

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const report = { blocked: [], graphqlRequests: [], connectionInit: [], consoleErrors: [] };
try {
  // No network but the node.
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.origin === origin) return route.continue();
    report.blocked.push(url.href);
    return route.abort('blockedbyclient');
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => { if (m.type() === 'error') report.consoleErrors.push(m.text()); });
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/graphql' && r.method() === 'POST') {
      report.graphqlRequests.push({ authorization: r.headers()['authorization'] ?? null });
    }
  });
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => {
      try {
        const msg = JSON.parse(typeof f.payload === 'string' ? f.payload : f.payload.toString());
        if (msg.type === 'connection_init') report.connectionInit.push(msg.payload ?? null);
      } catch { /* not JSON */ }
    });
  });

  const response = await page.goto(`${base}/graphql`, { waitUntil: 'load', timeout: DEADLINE_MS });
  report.pageStatus = response?.status() ?? null;
  await page.waitForSelector('.graphiql-container', { timeout: DEADLINE_MS });

  // The token: typed, used, kept in the tab's sessionStorage.
  await page.fill('#token', token);
  await page.click('#bar button[type=submit]');
  await page.waitForSelector('.graphiql-container', { timeout: DEADLINE_MS });
  report.sessionToken = await page.evaluate(() => sessionStorage.getItem('meshlet.token'));

  const editor = (selector) => `document.querySelector('${selector} .CodeMirror').CodeMirror`;
  // Sets the query, and waits until GraphiQL has parsed it (it does so
  // 100 ms after an edit; before that it would run the previous text's
  // operation facts, and send a subscription over HTTP).
  const setQuery = async (text) => {
    const get = editor('.graphiql-query-editor');
    await page.evaluate(([g, value]) => eval(g).setValue(value), [get, text]);
    await page.waitForFunction(
      ([g, value]) => eval(g).operations?.[0]?.loc?.source?.body === value,
      [get, text],
      { timeout: DEADLINE_MS },
    );
  };
  const result = () => page.evaluate((get) => {
    const cm = eval(get);
    return cm ? cm.getValue() : '';
  }, editor('.graphiql-response'));
  const run = () => page.click('.graphiql-execute-button');
  const until = async (what, test) => {
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      const text = await result();
      if (test(text)) return text;
      if (Date.now() > deadline) throw new Error(`${what}: GraphiQL shows ${JSON.stringify(text)}`);
      await page.waitForTimeout(100);
    }
  };

  await setQuery('{ products { name } sensor(sensor_id: "s1") { temp status } }');
  await run();
  report.query = JSON.parse(await until('query', (t) => t.includes('"data"') || t.includes('"errors"')));
  await page.screenshot({ path: screenshot, fullPage: true });

  // A subscription, over the WebSocket with the token in connection_init:
  // write the sensor until GraphiQL shows an event.
  await setQuery('subscription Changes { sensorChanges { entity instance { temp } } }');
  await run();
  let n = 0;
  const event = until('subscription', (t) => t.includes('sensorChanges'));
  let shown;
  event.then((t) => { shown = t; }, () => {});
  while (shown === undefined) {
    n += 1;
    await fetch(`${base}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ query: `mutation { upsertSensor(input: { sensor_id: "s2", temp: ${n} }) { sensor_id } }` }),
    });
    await Promise.race([event.catch(() => {}), new Promise((r) => setTimeout(r, 250))]);
    if (n > DEADLINE_MS / 250) break;
  }
  report.event = JSON.parse(await event);
} catch (e) {
  report.failed = String(e?.stack ?? e);
} finally {
  await context.close();
}
console.log(JSON.stringify(report));
