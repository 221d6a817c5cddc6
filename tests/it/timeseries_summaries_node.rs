//! `series` through the real binary over real MQTT (the node's embedded
//! broker, a rumqttc client, QoS 1): a ~1 Hz stream with late events into
//! small chunks, whose buckets equal a brute-force computation over the
//! raw readings published — answered from sealed chunk summaries for a
//! role that sees the fields clear (`meshlet_series_chunks_total
//! {read="summary"}` grows), and by decoding for a role with a `round`
//! mask (rounded values aggregated, `{read="decoded"}` grows).

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::graphql::Gql;
use common::{create_token, node_workdir, NodeBuilder};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

const PROBE: &str = r#"
product: probe
version: 1
domain: test
owner: test@example.com
key: probe_id
fields:
  probe_id: { type: string, required: true }
  temp:     { type: float }
  state:    { type: string, enum: [ok, warn, fault] }
sources:
  - mqtt: { topic: "probes/{probe_id}", format: json, qos: 1, event_time: /ts }
quality: { on_invalid: reject }
access:
  viewer:
    read: true
    mask: { temp: { round: 10 } }
  admin: { read: true, write: true, erase: true }
"#;

/// One reading as published: event time (ms), temp, state.
#[derive(Clone, Debug)]
struct Raw {
    ts: i64,
    temp: Option<f64>,
    state: Option<&'static str>,
}

/// The buckets of `raws` (arrival order) over [since, until) ms, `every`
/// ms wide, as `series` renders them; `round`: a mask step on temp.
fn expected(raws: &[Raw], since: i64, until: i64, every: i64, round: Option<f64>) -> Vec<Value> {
    let mut inside: Vec<(usize, &Raw)> = raws
        .iter()
        .enumerate()
        .filter(|(_, r)| r.ts >= since && r.ts < until)
        .collect();
    inside.sort_by_key(|(i, r)| (r.ts, *i));
    let states: Vec<(i64, &str)> = inside
        .iter()
        .filter_map(|(_, r)| r.state.map(|s| (r.ts, s)))
        .collect();
    let mut out = Vec::new();
    let mut start = since.div_euclid(every) * every;
    while start < until {
        let end = start + every;
        let events: Vec<&Raw> = inside
            .iter()
            .filter(|(_, r)| r.ts >= start && r.ts < end)
            .map(|(_, r)| *r)
            .collect();
        if events.is_empty() {
            start = end;
            continue;
        }
        let temps: Vec<f64> = events
            .iter()
            .filter_map(|r| r.temp)
            .map(|t| round.map_or(t, |step| (t / step).round() * step))
            .collect();
        let temp = if temps.is_empty() {
            Value::Null
        } else {
            let sum: f64 = temps.iter().sum();
            json!({
                "count": temps.len(),
                "min": temps.iter().copied().fold(f64::INFINITY, f64::min),
                "max": temps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                "sum": sum, "avg": sum / temps.len() as f64,
                "first": temps[0], "last": temps[temps.len() - 1],
            })
        };
        let mut shares: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
        for r in &events {
            if let Some(s) = r.state {
                shares.entry(s).or_default().0 += 1;
            }
        }
        for (j, (from, s)) in states.iter().enumerate() {
            let to = states.get(j + 1).map_or(until, |n| n.0);
            let overlap = to.min(end) - (*from).max(start);
            if overlap > 0 {
                shares.entry(s).or_default().1 += overlap;
            }
        }
        let longest = shares
            .iter()
            .filter(|(_, (_, held))| *held > 0)
            .max_by(|a, b| a.1 .1.cmp(&b.1 .1).then(b.0.cmp(a.0)))
            .map(|(v, _)| json!(v))
            .unwrap_or(Value::Null);
        let values: Vec<Value> = shares
            .iter()
            .map(|(v, (count, held))| json!({ "value": v, "count": count, "seconds": *held as f64 / 1000.0 }))
            .collect();
        out.push(json!({
            "start": start, "end": end, "count": events.len(),
            "temp": temp, "state": { "longest": longest, "values": values },
        }));
        start = end;
    }
    out
}

/// Equal, numbers within 1e-6.
fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(f64::NAN)).abs() < 1e-6
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

fn rfc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .expect("time")
        .to_string()
}

fn millis(v: &Value) -> i64 {
    let t: jiff::Timestamp = v.as_str().expect("a DateTime").parse().expect("RFC 3339");
    t.as_millisecond()
}

/// Publishes every message with QoS 1 over one connection and waits for
/// all PUBACKs (the node acknowledges once the write is durable).
async fn publish_all(port: u16, messages: Vec<(String, Vec<u8>)>) -> usize {
    let mut options = MqttOptions::new("series-publisher", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("queue publish");
        }
        client
    });
    let mut acked = 0;
    while acked < total {
        match tokio::time::timeout(Duration::from_secs(20), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(err)) => panic!("MQTT connection failed: {err}"),
            Err(_) => break,
        }
    }
    let _ = sender.await;
    acked
}

const SERIES: &str = "query S($since: DateTime, $until: DateTime, $every: Duration!) {
  probe(probe_id: \"p1\") { series(since: $since, until: $until, every: $every) {
    start end count values { temp { count min max sum avg first last } state { longest values { value count seconds } } } } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_over_mqtt_reads_summaries_and_equals_brute_force() {
    let dir = node_workdir(
        &[("probe", PROBE)],
        "[store]\nhistory_chunk_events = 32\nhistory_block_events = 8\n",
    );
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let port = node.mqtt.expect("embedded broker").port();
    let admin = Gql::new(&node);
    let viewer = admin.with_token(&create_token(dir.path(), "viewer", "viewer"));

    // ~1 Hz for 40 minutes, from an hour boundary; 4% held back and
    // published a little later (late events).
    let base = 1_700_002_800_000i64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(27);
    let mut raws: Vec<Raw> = Vec::new();
    let mut held: Vec<Raw> = Vec::new();
    for i in 0..2_400i64 {
        let raw = Raw {
            ts: base + i * 1000 + rng.random_range(0..300),
            temp: rng
                .random_bool(0.9)
                .then(|| f64::from(rng.random_range(-400i32..1200)) / 8.0),
            state: rng
                .random_bool(0.3)
                .then(|| *["ok", "warn", "fault"].choose(&mut rng).expect("a state")),
        };
        if rng.random_bool(0.04) {
            held.push(raw);
        } else {
            raws.push(raw);
        }
        if rng.random_bool(0.02) {
            raws.append(&mut held);
        }
    }
    raws.append(&mut held);
    let messages: Vec<(String, Vec<u8>)> = raws
        .iter()
        .map(|r| {
            let mut payload = json!({ "ts": rfc(r.ts) });
            if let Some(t) = r.temp {
                payload["temp"] = json!(t);
            }
            if let Some(s) = r.state {
                payload["state"] = json!(s);
            }
            ("probes/p1".to_string(), payload.to_string().into_bytes())
        })
        .collect();
    assert_eq!(publish_all(port, messages).await, raws.len());

    let series = |client: &Gql, since: i64, until: i64, every: &str| {
        let client = client.clone();
        let variables = json!({ "since": rfc(since), "until": rfc(until), "every": every });
        async move {
            let data = client.data(SERIES, variables).await;
            data["probe"]["series"]
                .as_array()
                .expect("buckets")
                .iter()
                .map(|b| {
                    let mut b = b.clone();
                    b["start"] = json!(millis(&b["start"]));
                    b["end"] = json!(millis(&b["end"]));
                    let stats = b["values"].take();
                    if let (Some(bucket), Value::Object(stats)) = (b.as_object_mut(), stats) {
                        bucket.remove("values");
                        bucket.extend(stats);
                    }
                    b
                })
                .collect::<Vec<Value>>()
        }
    };
    let summary = r#"meshlet_series_chunks_total{read="summary"}"#;
    let decoded = r#"meshlet_series_chunks_total{read="decoded"}"#;

    for (since, until, every, every_ms) in [
        (base, base + 2_400_000, "5m", 300_000),
        (base, base + 2_400_000, "1m", 60_000),
        (base + 123_456, base + 2_000_000, "5m", 300_000),
        (base - 3_600_000, base + 7_200_000, "1h", 3_600_000),
    ] {
        let before = admin.metric(summary).await.unwrap_or(0.0);
        let got = series(&admin, since, until, every).await;
        let want = expected(&raws, since, until, every_ms, None);
        assert_eq!(got.len(), want.len(), "{every} from {since}");
        for (g, w) in got.iter().zip(&want) {
            assert!(close(g, w), "admin, {every}:\n got {g:#}\nwant {w:#}");
        }
        let used = admin.metric(summary).await.unwrap_or(0.0) - before;
        if every != "1m" {
            assert!(used > 10.0, "{every}: {used} chunks read as summaries");
        }
    }

    // A role with a mask on temp: every chunk decoded, rounded values
    // aggregated.
    let (summarised, decoded_before) = (
        admin.metric(summary).await.unwrap_or(0.0),
        admin.metric(decoded).await.unwrap_or(0.0),
    );
    let got = series(&viewer, base, base + 2_400_000, "5m").await;
    let want = expected(&raws, base, base + 2_400_000, 300_000, Some(10.0));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(close(g, w), "viewer:\n got {g:#}\nwant {w:#}");
    }
    assert_eq!(admin.metric(summary).await.unwrap_or(0.0), summarised);
    assert!(admin.metric(decoded).await.unwrap_or(0.0) - decoded_before > 50.0);

    let (status, _) = node.stop();
    assert!(status.success());
}
