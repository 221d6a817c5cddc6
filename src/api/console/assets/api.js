// The console's only way to the node: GraphQL over HTTP and over
// graphql-transport-ws, the JSON status and /metrics. The token, when one
// is needed, lives in this tab's sessionStorage and goes to this origin only.

const TOKEN_KEY = "meshlet.console.token";

export function token() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage off: the token lasts until reload */ }
}

/** Thrown when the node wants (other) credentials: the console asks for a token. */
export class AuthError extends Error {}

function headers(extra) {
  const h = Object.assign({}, extra);
  const t = token();
  if (t) h.Authorization = "Bearer " + t;
  return h;
}

async function check(response) {
  if (response.status === 401) {
    let message = "a token is needed";
    try { message = (await response.json()).errors[0].message; } catch { /* keep */ }
    throw new AuthError(message);
  }
  return response;
}

/** Runs a query; resolves to { data, errors } (errors may be partial). */
export async function gql(query, variables = {}) {
  const response = await check(await fetch("/graphql", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "application/json" }),
    body: JSON.stringify({ query, variables }),
  }));
  const body = await response.json();
  return { data: body.data || null, errors: body.errors || [] };
}

/** Like gql, but any error rejects. */
export async function gqlData(query, variables) {
  const { data, errors } = await gql(query, variables);
  if (errors.length) throw new Error(errors.map((e) => e.message).join("; "));
  return data;
}

export async function getJson(path) {
  const response = await check(await fetch(path, { headers: headers({ Accept: "application/json" }) }));
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

export async function postJson(path) {
  const response = await check(await fetch(path, { method: "POST", headers: headers({ Accept: "application/json" }) }));
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

/** /metrics as { name: [{ labels, value }] }. */
export async function metrics() {
  const response = await fetch("/metrics");
  return parseMetrics(await response.text());
}

export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    const re = /(\w+)="((?:[^"\\]|\\.)*)"/g;
    let l;
    while ((l = re.exec(m[3] || ""))) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[4]) });
  }
  return out;
}

/** Sum of a metric's samples whose labels include `match`. */
export function sum(samples, name, match = {}) {
  return (samples[name] || [])
    .filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

/**
 * One subscription over graphql-transport-ws. `onNext(data)` per event,
 * `onError(message)` once when it ends in error. Returns a function that
 * closes it.
 */
export function subscribe(query, variables, onNext, onError) {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/graphql/ws";
  let closed = false;
  const ws = new WebSocket(url, "graphql-transport-ws");
  const fail = (message) => { if (!closed) { closed = true; onError(message); } try { ws.close(); } catch { /* gone */ } };
  ws.onopen = () => {
    const t = token();
    ws.send(JSON.stringify({ type: "connection_init", payload: t ? { token: t } : {} }));
  };
  ws.onmessage = (event) => {
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    if (msg.type === "connection_ack") {
      ws.send(JSON.stringify({ id: "1", type: "subscribe", payload: { query, variables } }));
    } else if (msg.type === "next") {
      if (msg.payload.errors && msg.payload.errors.length) fail(msg.payload.errors.map((e) => e.message).join("; "));
      else onNext(msg.payload.data);
    } else if (msg.type === "error") {
      fail((msg.payload || []).map((e) => e.message).join("; ") || "subscription refused");
    } else if (msg.type === "ping") {
      ws.send(JSON.stringify({ type: "pong" }));
    } else if (msg.type === "complete") {
      fail("the node ended the subscription");
    }
  };
  ws.onclose = (event) => fail(event.reason || "connection closed (" + event.code + ")");
  return () => { closed = true; try { ws.close(1000); } catch { /* gone */ } };
}
