// Outside GraphQL clients against a node, as apps use them: Apollo Client
// (HttpLink POST and GET, PersistedQueryLink, BatchHttpLink,
// GraphQLWsLink), urql with its default GET, graphql-ws and
// subscriptions-transport-ws with one subprotocol and with both offered.
//
// Usage: node clients.mjs <http url of /graphql> <token>
// Prints one JSON object as the last line: per scenario what the client
// saw (data, errors with path and extensions, HTTP methods and bodies
// sent, close codes). The Rust test (tests/it/graphql_clients.rs) asserts on
// it; this script only drives the clients and reports.
//
// Subscriptions: each scenario subscribes, then writes an upsert every
// 200 ms until the first event arrives (the server says nothing when a
// subscription is in place), with a deadline.
import { createHash } from 'node:crypto';
import WebSocket from 'ws';
import { ApolloClient, InMemoryCache, HttpLink, gql } from '@apollo/client';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { BatchHttpLink } from '@apollo/client/link/batch-http';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { createClient } from 'graphql-ws';
import { SubscriptionClient } from 'subscriptions-transport-ws';
import { Client as UrqlClient, fetchExchange } from '@urql/core';

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error('usage: node clients.mjs <url> <token>');
  process.exit(2);
}
const wsUrl = url.replace(/^http/, 'ws') + '/ws';
const auth = { authorization: `Bearer ${token}` };
const DEADLINE_MS = 15000;

// A query with a good field beside one that fails (a nested non-null
// field with a bad argument nulls its nullable parent): data and error
// shapes in one answer.
const MIXED = `query Mixed($id: String!) {
  ok: sensor(sensor_id: $id) { sensor_id temp status }
  bad: sensor(sensor_id: $id) { sensor_id history(first: -1) { nodes { version } } }
}`;
const CHANGES = `subscription { sensorChanges { entity instance { temp } } }`;

/// fetch that records what each request was.
function recordingFetch(log) {
  return async (input, init = {}) => {
    const u = typeof input === 'string' ? input : input.url;
    log.push({ method: init.method || 'GET', url: u, body: init.body ?? null });
    return fetch(input, init);
  };
}

const errorsOf = (errors) =>
  (errors || []).map((e) => ({ message: e.message, path: e.path ?? null, code: e.extensions?.code ?? null }));

async function withDeadline(promise, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${DEADLINE_MS} ms`)), DEADLINE_MS);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/// Writes sensor `s9` every 200 ms until `done` resolves.
async function writeUntil(done) {
  let n = 0;
  let finished = false;
  done.finally(() => { finished = true; });
  while (!finished) {
    n += 1;
    await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...auth },
      body: JSON.stringify({ query: `mutation { upsertSensor(input: { sensor_id: "s9", temp: ${n} }) { sensor_id } }` }),
    });
    await Promise.race([done.catch(() => {}), new Promise((r) => setTimeout(r, 200))]);
  }
}

/// The first event of an observable-like subscription, while writing.
async function firstEvent(subscribe, what) {
  let unsubscribe = () => {};
  const event = new Promise((resolve, reject) => {
    unsubscribe = subscribe(resolve, reject);
  });
  try {
    const [result] = await withDeadline(Promise.all([event, writeUntil(event)]), what);
    return result;
  } finally {
    unsubscribe();
  }
}

async function apollo(link) {
  return new ApolloClient({ link, cache: new InMemoryCache() });
}

async function apolloQuery(client) {
  const result = await client.query({
    query: gql(MIXED),
    variables: { id: 's1' },
    errorPolicy: 'all',
    fetchPolicy: 'no-cache',
  });
  return { data: result.data ?? null, errors: errorsOf(result.error?.errors) };
}

const scenarios = {
  async apolloHttpPost() {
    const log = [];
    const client = await apollo(new HttpLink({ uri: url, headers: auth, fetch: recordingFetch(log) }));
    const out = await apolloQuery(client);
    return { ...out, methods: log.map((r) => r.method) };
  },

  async apolloHttpGet() {
    const log = [];
    const client = await apollo(
      new HttpLink({ uri: url, headers: auth, fetch: recordingFetch(log), useGETForQueries: true }),
    );
    const out = await apolloQuery(client);
    return { ...out, methods: log.map((r) => r.method) };
  },

  async apolloPersisted() {
    const log = [];
    const sha256 = (text) => createHash('sha256').update(text).digest('hex');
    const link = new PersistedQueryLink({ sha256 }).concat(
      new HttpLink({ uri: url, headers: auth, fetch: recordingFetch(log) }),
    );
    const client = await apollo(link);
    const first = await apolloQuery(client);
    const second = await apolloQuery(client);
    // What each request carried: the hash only, or the text too.
    const sent = log.map((r) => {
      const body = r.body ? JSON.parse(r.body) : Object.fromEntries(new URL(r.url).searchParams);
      const extensions = typeof body.extensions === 'string' ? JSON.parse(body.extensions) : body.extensions;
      return { method: r.method, query: Boolean(body.query), hash: extensions?.persistedQuery?.sha256Hash ?? null };
    });
    return { first, second, sent };
  },

  async apolloBatch() {
    const client = await apollo(new BatchHttpLink({ uri: url, headers: auth, batchMax: 5 }));
    const q = gql`query One { sensor(sensor_id: "s1") { temp } }`;
    const results = await Promise.allSettled([
      client.query({ query: q, fetchPolicy: 'no-cache' }),
      client.query({ query: q, fetchPolicy: 'no-cache' }),
    ]);
    return results.map((r) => {
      if (r.status === 'fulfilled') return { data: r.value.data ?? null, error: null };
      const e = r.reason;
      return {
        data: null,
        error: {
          name: e?.name ?? null,
          statusCode: e?.statusCode ?? null,
          body: typeof e?.bodyText === 'string' ? JSON.parse(e.bodyText) : (e?.result ?? null),
        },
      };
    });
  },

  async apolloWs() {
    const ws = createClient({ url: wsUrl, webSocketImpl: WebSocket, connectionParams: { Authorization: `Bearer ${token}` }, lazy: true, retryAttempts: 0 });
    const client = await apollo(new GraphQLWsLink(ws));
    try {
      const query = await apolloQuery(client);
      const event = await firstEvent((next, fail) => {
        const sub = client.subscribe({ query: gql(CHANGES) }).subscribe({ next, error: fail });
        return () => sub.unsubscribe();
      }, 'GraphQLWsLink subscription');
      return { query, event: { data: event.data ?? null } };
    } finally {
      await ws.dispose();
    }
  },

  async urqlDefaultGet() {
    const log = [];
    const client = new UrqlClient({ url, exchanges: [fetchExchange], fetchOptions: { headers: auth }, fetch: recordingFetch(log) });
    const result = await client.query(MIXED, { id: 's1' }).toPromise();
    return {
      data: result.data ?? null,
      errors: errorsOf(result.error?.graphQLErrors),
      methods: log.map((r) => r.method),
    };
  },

  ...graphqlWs('graphqlWsOneProtocol', null),
  ...graphqlWs('graphqlWsBothOffered', ['graphql-ws', 'graphql-transport-ws']),
  ...legacy('legacyOneProtocol', null),
  ...legacy('legacyBothOffered', ['graphql-ws', 'graphql-transport-ws']),
};

/// A WebSocket that offers `protocols` whatever the client asks for, and
/// reports the protocol the handshake named.
function offering(protocols, seen) {
  return class extends WebSocket {
    constructor(address, asked, options) {
      super(address, protocols ?? asked, options);
      this.on('open', () => { seen.protocol = this.protocol; });
      this.on('close', (code) => { seen.close = code; });
    }
  };
}

function graphqlWs(name, protocols) {
  return {
    async [name]() {
      const seen = {};
      const client = createClient({
        url: wsUrl,
        webSocketImpl: offering(protocols, seen),
        connectionParams: { Authorization: `Bearer ${token}` },
        retryAttempts: 0,
      });
      try {
        const query = await withDeadline(
          new Promise((resolve, reject) => {
            let result;
            client.subscribe(
              { query: MIXED, variables: { id: 's1' } },
              { next: (r) => { result = r; }, error: reject, complete: () => resolve(result) },
            );
          }),
          `${name} query`,
        );
        const event = await firstEvent(
          (next, fail) => client.subscribe({ query: CHANGES }, { next, error: fail, complete: () => {} }),
          `${name} subscription`,
        );
        return {
          protocol: seen.protocol,
          query: { data: query?.data ?? null, errors: errorsOf(query?.errors) },
          event: { data: event.data ?? null },
        };
      } finally {
        await client.dispose();
      }
    },
  };
}

function legacy(name, protocols) {
  return {
    async [name]() {
      const seen = {};
      // The client throws out of its socket handler on a message it does
      // not know: that ends the scenario.
      let crash;
      const crashed = new Promise((_, reject) => {
        crash = (e) => reject(e);
        process.on('uncaughtException', crash);
      });
      crashed.catch(() => {});
      const client = new SubscriptionClient(
        wsUrl,
        { reconnect: false, connectionParams: { Authorization: `Bearer ${token}` } },
        offering(protocols, seen),
      );
      try {
        const query = await withDeadline(
          Promise.race([
            crashed,
            new Promise((resolve, reject) => {
              const closed = () => reject(new Error(`closed with ${seen.close}`));
              client.onDisconnected(closed);
              client.request({ query: MIXED, variables: { id: 's1' } }).subscribe({
                next: (r) => resolve(r),
                error: reject,
              });
            }),
          ]),
          `${name} query`,
        );
        const event = await Promise.race([
          crashed,
          firstEvent((next, fail) => {
            const sub = client.request({ query: CHANGES }).subscribe({ next, error: fail });
            return () => sub.unsubscribe();
          }, `${name} subscription`),
        ]);
        return {
          protocol: seen.protocol,
          query: { data: query?.data ?? null, errors: errorsOf(query?.errors) },
          event: { data: event.data ?? null },
        };
      } catch (e) {
        return { protocol: seen.protocol ?? null, failed: String(e?.message ?? e), close: seen.close ?? null };
      } finally {
        process.off('uncaughtException', crash);
        client.close();
      }
    },
  };
}

const report = {};
for (const [name, run] of Object.entries(scenarios)) {
  try {
    report[name] = await run();
  } catch (e) {
    report[name] = { failed: String(e?.stack ?? e) };
  }
}
console.log(JSON.stringify(report));
// Sockets and timers of failed scenarios must not keep the process up.
process.exit(0);
