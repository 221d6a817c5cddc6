// MQTT.js (pinned in package-lock.json) against the node's embedded broker:
// tests/it/mqtt_conformance.rs runs one case per call and reads the JSON line
// this prints. Usage: node mqtt_conformance.mjs <mqtt://host:port> <case> <version>
import mqtt from "mqtt";

const [url, which, version = "5"] = process.argv.slice(2);
const protocolVersion = Number(version);
const DEADLINE_MS = 15000;

function connect(options = {}) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      protocolVersion,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      ...options,
    });
    // Every message from the first on, even those that come with the
    // CONNACK (a resumed session's).
    client.inbox = [];
    client.on("message", (topic, payload, packet) =>
      client.inbox.push({ topic, payload: payload.toString(), qos: packet.qos }),
    );
    client.once("connect", (connack) => resolve({ client, connack }));
    client.once("error", (err) => reject(err));
  });
}

/// Resolves with the first `count` messages `client` receives.
function collect(client, count, ms = DEADLINE_MS) {
  return new Promise((resolve) => {
    const got = [];
    const timer = setTimeout(() => resolve(got), ms);
    client.on("message", (topic, payload, packet) => {
      got.push({
        topic,
        payload: payload.toString(),
        retain: packet.retain,
        qos: packet.qos,
        properties: packet.properties ?? null,
      });
      if (got.length >= count) {
        clearTimeout(timer);
        resolve(got);
      }
    });
  });
}

const cases = {
  // 500 QoS 1 publishes, every one acked once durable, half of them
  // through a topic alias, some with user properties and a content type.
  async publish() {
    const { client, connack } = await connect({
      clientId: `pub-${protocolVersion}`,
      properties: protocolVersion === 5 ? { receiveMaximum: 20 } : undefined,
    });
    let acked = 0;
    const sends = [];
    for (let i = 0; i < 500; i++) {
      const payload = JSON.stringify({ temp: 20 + (i % 10), seq: i });
      const options = { qos: 1 };
      let topic = `site/berlin/sensor/s${i % 5}`;
      if (protocolVersion === 5 && i >= 250) {
        // The first of each sensor sets the alias, later ones use it.
        options.properties = { topicAlias: (i % 5) + 1 };
        if (i >= 255) topic = "";
      }
      sends.push(client.publishAsync(topic, payload, options).then(() => acked++));
    }
    let properties = null;
    if (protocolVersion === 5) {
      // The event time and the status as user properties, the payload
      // as NDJSON by its content type.
      const ndjson = '{"temp": 30, "seq": 1000}\n{"temp": 31, "seq": 1001}\n';
      sends.push(
        client
          .publishAsync("site/lyon/sensor/props", ndjson, {
            qos: 1,
            properties: {
              contentType: "application/x-ndjson",
              userProperties: { status: "warn", ts: "2024-05-01T12:00:00Z" },
            },
          })
          .then(() => acked++),
      );
      properties = connack.properties ?? null;
    }
    await Promise.all(sends);
    await client.endAsync();
    return { acked, connack: { sessionPresent: connack.sessionPresent, properties } };
  },

  // Publish properties reach a subscriber: content type, user properties,
  // response topic, correlation data; no-local holds back one's own.
  async properties() {
    const { client: sub } = await connect({ clientId: "props-sub" });
    await sub.subscribeAsync("req/#", { qos: 1 });
    await sub.subscribeAsync("own/#", { qos: 0, nl: true });
    const received = collect(sub, 1);
    await sub.publishAsync("own/echo", "not to myself");
    const { client: pub } = await connect({ clientId: "props-pub" });
    await pub.publishAsync("req/ping", "hello", {
      qos: 1,
      properties: {
        contentType: "text/plain",
        userProperties: { trace: "abc" },
        responseTopic: "reply/props-pub",
        correlationData: Buffer.from("42"),
        messageExpiryInterval: 60,
      },
    });
    const got = await received;
    // Wait a moment more for an own/echo that must not come.
    const late = await collect(sub, 1, 500);
    await pub.endAsync();
    await sub.endAsync();
    return {
      got: got.map((m) => ({
        ...m,
        properties: m.properties && {
          ...m.properties,
          correlationData: m.properties.correlationData?.toString(),
        },
      })),
      late: late.map((m) => m.topic),
    };
  },

  // Session expiry: a session asked for 300 s is present on return; one
  // with the default 0 s is not.
  async session() {
    const first = await connect({
      clientId: "sess-keep",
      clean: false,
      properties: { sessionExpiryInterval: 300 },
    });
    await first.client.subscribeAsync("cmd/sess-keep", { qos: 1 });
    await first.client.endAsync();
    const again = await connect({
      clientId: "sess-keep",
      clean: false,
      properties: { sessionExpiryInterval: 300 },
    });
    const sub = collect(again.client, 1, 5000);
    const { client: other } = await connect({ clientId: "sess-cmd" });
    await other.publishAsync("cmd/sess-keep", "reboot", { qos: 1 });
    const delivered = await sub;
    await again.client.endAsync();
    await other.endAsync();
    const short = await connect({ clientId: "sess-zero", clean: false });
    await short.client.endAsync();
    const back = await connect({ clientId: "sess-zero", clean: false });
    await back.client.endAsync();
    return {
      first: first.connack.sessionPresent,
      resumed: again.connack.sessionPresent,
      delivered: delivered.map((m) => m.payload),
      zeroFirst: short.connack.sessionPresent,
      zeroAgain: back.connack.sessionPresent,
    };
  },

  // Will delay: a will with a 2 s delay comes about 2 s after the client
  // vanished; a client that comes back within its delay sends none.
  async will() {
    const { client: watcher } = await connect({ clientId: "will-watch" });
    await watcher.subscribeAsync("wills/#");
    const wills = collect(watcher, 2, 5000);
    const started = Date.now();
    const arrivals = [];
    watcher.on("message", (topic) => arrivals.push({ topic, after: Date.now() - started }));
    const will = (id) => ({
      clientId: id,
      will: {
        topic: `wills/${id}`,
        payload: Buffer.from("gone"),
        qos: 0,
        retain: false,
        properties: { willDelayInterval: 2 },
      },
      properties: { sessionExpiryInterval: 60 },
      clean: false,
    });
    const { client: gone } = await connect(will("will-gone"));
    const { client: back } = await connect(will("will-back"));
    // Vanish without DISCONNECT.
    gone.stream.destroy();
    back.stream.destroy();
    const returned = await connect(will("will-back"));
    const got = await wills;
    await returned.client.endAsync();
    await watcher.endAsync();
    return { wills: got.map((m) => m.topic), arrivals };
  },

  // QoS 1/2 over MQTT 5: the QoS asked is granted, and what comes while a
  // persistent session's client is away waits for it, in order.
  async offline() {
    const options = {
      clientId: "off-dev",
      clean: false,
      properties: { sessionExpiryInterval: 300 },
    };
    const first = await connect(options);
    const granted = await first.client.subscribeAsync("cmd/off-dev", { qos: 2 });
    await first.client.endAsync();
    const { client: app } = await connect({ clientId: "off-app" });
    for (const n of ["one", "two", "three"]) {
      await app.publishAsync("cmd/off-dev", n, { qos: 1 });
    }
    await app.endAsync();
    const again = await connect(options);
    const deadline = Date.now() + DEADLINE_MS;
    while (again.client.inbox.length < 3 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await again.client.endAsync();
    return {
      granted: granted.map((g) => g.qos),
      sessionPresent: again.connack.sessionPresent,
      got: again.client.inbox,
    };
  },

  // Message expiry: a retained message with a 1 s expiry is delivered with
  // what is left of it, and no longer once it expired.
  async expiry() {
    const { client: pub } = await connect({ clientId: "exp-pub" });
    await pub.publishAsync("exp/a", "short-lived", {
      qos: 1,
      retain: true,
      properties: { messageExpiryInterval: 1 },
    });
    await pub.publishAsync("exp/b", "lasting", { qos: 1, retain: true });
    await pub.endAsync();
    const retainedNow = async (id) => {
      const { client } = await connect({ clientId: id });
      await client.subscribeAsync("exp/#", { qos: 1 });
      // exp/b always comes; exp/a before it if still retained (topic order
      // is not promised, so wait for exp/b and look at everything).
      const deadline = Date.now() + DEADLINE_MS;
      while (!client.inbox.some((m) => m.topic === "exp/b") && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      const topics = client.inbox.map((m) => m.topic).sort();
      await client.endAsync();
      return topics;
    };
    const fresh = await retainedNow("exp-sub-1");
    // Poll until the 1 s expiry passed (at most 5 s).
    let later = fresh;
    const until = Date.now() + 5000;
    let n = 2;
    while (later.includes("exp/a") && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 200));
      later = await retainedNow(`exp-sub-${n++}`);
    }
    return { fresh, later };
  },

  // A client's maximum packet size: what is larger is not sent to it.
  async maxpacket() {
    const { client: sub } = await connect({
      clientId: "small-sub",
      properties: { maximumPacketSize: 200 },
    });
    await sub.subscribeAsync("big/#");
    const received = collect(sub, 1, 3000);
    const { client: pub } = await connect({ clientId: "big-pub" });
    await pub.publishAsync("big/one", "x".repeat(1000), { qos: 1 });
    await pub.publishAsync("big/two", "small", { qos: 1 });
    const got = await received;
    await pub.endAsync();
    await sub.endAsync();
    return { got: got.map((m) => m.topic) };
  },
};

const run = cases[which];
if (!run) {
  console.error(`unknown case ${which}`);
  process.exit(2);
}
const timer = setTimeout(() => {
  console.error(`case ${which} did not finish`);
  process.exit(3);
}, 40000);
try {
  const result = await run();
  console.log(JSON.stringify(result));
  clearTimeout(timer);
  process.exit(0);
} catch (err) {
  console.error(`case ${which} failed: ${err?.stack ?? err}`);
  process.exit(1);
}
