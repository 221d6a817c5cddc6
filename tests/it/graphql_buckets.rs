//! `<product>Buckets` end to end: the real binary, readings published
//! with the real `mosquitto_pub` (event time in the payload), a real
//! graphql-transport-ws client. Closed buckets equal `series` over the
//! same bucket, a late event revises its bucket (equal to the bucket
//! recomputed), `lateness` holds a bucket open, `since` backfills from
//! history; a masked role gets rounded aggregates and no statistics of a
//! field its mask removes, a hidden entity sends nothing, a revoked token
//! ends the subscription, a role without `subscribe`, a backfill over the
//! cost limit and a lateness of too many buckets are refused; random
//! streams with late events end with every bucket's newest emission
//! equal to `series`; `wallClock` closes the bucket of a silent entity.

use crate::common;

use std::time::Duration;

use common::graphql::{start, workdir, Gql, Protocol, Subscriber};
use common::{create_token, mosquitto_pub, run, stderr, NodeProcess};
use serde_json::{json, Value};

const METER: &str = r#"
product: meter
version: 1
domain: test
owner: test@example.com
key: meter_id
fields:
  meter_id: { type: string, required: true }
  site:     { type: string }
  temp:     { type: float }
  state:    { type: string, enum: [ok, warn, fault] }
  load:     { type: int }
sources:
  - mqtt: { topic: "site/{site}/meter/{meter_id}", format: json, event_time: /ts }
quality: { on_invalid: reject }
access:
  viewer:
    read: true
    subscribe: true
    where: "site == 'berlin'"
    mask: { temp: { round: 10 }, load: null }
  auditor: { read: true, subscribe: false }
  admin: { read: true, write: true, erase: true }
"#;

/// Bucket 0 of a test: the minute boundary an hour ago (ms since the
/// epoch). Recent, so a backfill from a few minutes before it costs what
/// it returns (the cost model counts a backfill up to now).
fn t0() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    (now - 3_600_000).div_euclid(MINUTE) * MINUTE
}
const MINUTE: i64 = 60_000;
const WAIT: Duration = Duration::from_secs(10);

/// What the tests select of a bucket, in `series` and in the feed.
const BUCKET: &str = "start end count values { temp { count min max avg sum first last } state { longest values { value count seconds } } load { count min max } }";

fn subscription(meter: &str, args: &str) -> String {
    format!(
        "subscription {{ meterBuckets(meter_id: \"{meter}\", every: \"1m\"{args}) {{ entity revision bucket {{ {BUCKET} }} }} }}"
    )
}

/// Publishes one reading of `meter` at `site`, event time `ts` (ms);
/// returns once the node acknowledged it (QoS 1: durable).
fn publish(node: &NodeProcess, site: &str, meter: &str, ts: i64, temp: f64, state: &str) {
    let port = node.mqtt.expect("embedded broker").port();
    let payload = json!({ "ts": ts, "temp": temp, "state": state, "load": 7 }).to_string();
    let out = mosquitto_pub(
        port,
        &format!("site/{site}/meter/{meter}"),
        payload.as_bytes(),
        1,
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Publishes every line of `lines` as one message to `topic`, from one
/// `mosquitto_pub -l` (QoS 1: it exits once all are acknowledged).
fn publish_lines(node: &NodeProcess, topic: &str, lines: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let port = node.mqtt.expect("embedded broker").port();
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
            "-l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write lines");
    let out = child.wait_with_output().expect("mosquitto_pub finishes");
    assert!(out.status.success(), "{}", stderr(&out));
}

fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.try_into().expect("after 1970"));
    humantime::format_rfc3339_millis(at).to_string()
}

/// `series` over exactly the bucket starting at `start_ms`, as `gql`'s
/// role sees it (its one bucket, or null when empty or hidden).
async fn series_bucket(gql: &Gql, meter: &str, start_ms: i64) -> Value {
    let query = format!(
        "{{ meter(meter_id: \"{meter}\") {{ series(since: \"{}\", until: \"{}\", every: \"1m\") {{ {BUCKET} }} }} }}",
        rfc3339(start_ms),
        rfc3339(start_ms + MINUTE)
    );
    let data = gql.data(&query, json!({})).await;
    let buckets = data["meter"]["series"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(buckets.len() <= 1, "{data}");
    buckets.into_iter().next().unwrap_or(Value::Null)
}

/// The next closed bucket the subscriber gets (no errors).
async fn next_close(subscriber: &mut Subscriber) -> Value {
    let payload = subscriber.next(WAIT).await;
    assert!(payload["errors"].is_null(), "{payload}");
    payload["data"]["meterBuckets"].clone()
}

/// Nothing more arrives within a moment (what was published was durable
/// before `mosquitto_pub` returned, so a close would be on its way).
async fn nothing_more(subscriber: &mut Subscriber) {
    if let Some(payload) = subscriber.maybe_next(Duration::from_millis(700)).await {
        panic!("expected nothing, got {payload}");
    }
}

/// The error code of a refused subscription's first error.
async fn refusal(subscriber: &mut Subscriber) -> String {
    let payload = subscriber.next_or_error(WAIT).await;
    let errors = payload
        .as_array()
        .cloned()
        .or_else(|| payload["errors"].as_array().cloned())
        .unwrap_or_else(|| panic!("expected errors, got {payload}"));
    errors[0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {payload}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_buckets_equal_series_late_events_revise_them_and_lateness_holds_them_open() {
    let dir = workdir(&[("meter", METER)], "");
    let node = start(dir.path());
    let admin = Gql::new(&node);
    let t0 = t0();
    // History before the subscriptions: minute -2 (closed; backfilled).
    publish(&node, "berlin", "m1", t0 - 2 * MINUTE + 1_000, 1.5, "ok");
    publish(&node, "berlin", "m1", t0 - 2 * MINUTE + 31_000, 2.5, "warn");
    publish(&node, "berlin", "m1", t0 - 30_000, 3.0, "ok");

    let mut live = Subscriber::start(
        &node,
        Protocol::TransportWs,
        &subscription("m1", ""),
        json!({}),
    )
    .await;
    let mut late = Subscriber::start(
        &node,
        Protocol::TransportWs,
        &subscription("m1", ", lateness: \"30s\""),
        json!({}),
    )
    .await;
    let since = format!(", since: \"{}\"", rfc3339(t0 - 5 * MINUTE));
    let mut backfill = Subscriber::start(
        &node,
        Protocol::TransportWs,
        &subscription("m1", &since),
        json!({}),
    )
    .await;
    admin.wait_subscriptions("meter", 3).await;

    // The backfill: minute -2 (closed), not minute -1 (the watermark's).
    let first = next_close(&mut backfill).await;
    assert_eq!(first["revision"], 0);
    assert_eq!(first["entity"], "m1");
    assert_eq!(first["bucket"]["count"], 2, "{first}");
    assert_eq!(
        first["bucket"],
        series_bucket(&admin, "m1", t0 - 2 * MINUTE).await
    );
    nothing_more(&mut backfill).await;

    // Minute 0: six readings; minute -1 closes at the first of them.
    let temps = [20.0, 21.5, 19.0, 22.25, 20.5, 23.0];
    for (i, temp) in temps.iter().enumerate() {
        let state = if i == 3 { "fault" } else { "ok" };
        publish(
            &node,
            "berlin",
            "m1",
            t0 + 10_000 * i as i64 + 500,
            *temp,
            state,
        );
    }
    let minus1 = series_bucket(&admin, "m1", t0 - MINUTE).await;
    assert_eq!(minus1["count"], 1);
    for subscriber in [&mut live, &mut backfill] {
        let closed = next_close(subscriber).await;
        assert_eq!(closed["revision"], 0);
        assert_eq!(closed["bucket"], minus1);
        nothing_more(subscriber).await;
    }
    // Lateness 30s: minute -1 ends at t0, closed by the reading at
    // t0 + 30.5s.
    let closed = next_close(&mut late).await;
    assert_eq!(closed["bucket"], minus1);
    nothing_more(&mut late).await;
    publish(&node, "berlin", "m1", t0 + MINUTE + 5_000, 30.0, "ok");
    // Minute 0 closes for the live subscribers, equal to `series`.
    let series0 = series_bucket(&admin, "m1", t0).await;
    assert_eq!(series0["count"], 6);
    for subscriber in [&mut live, &mut backfill] {
        let closed = next_close(subscriber).await;
        assert_eq!(closed["revision"], 0);
        assert_eq!(closed["bucket"], series0);
        assert_eq!(closed["bucket"]["values"]["temp"]["max"], 23.0);
        assert_eq!(closed["bucket"]["values"]["state"]["longest"], "ok");
        nothing_more(subscriber).await;
    }
    // With lateness, minute 0 is still open (its end + 30s is not
    // reached by t0 + 65s).
    nothing_more(&mut late).await;

    // A late reading in minute 0: a revision, equal to the recomputed
    // bucket; the lateness subscriber still holds minute 0 open and
    // takes it in.
    publish(&node, "berlin", "m1", t0 + 55_000, -4.0, "warn");
    let revised0 = series_bucket(&admin, "m1", t0).await;
    assert_eq!(revised0["count"], 7);
    assert_eq!(revised0["values"]["temp"]["min"], -4.0);
    for subscriber in [&mut live, &mut backfill] {
        let revision = next_close(subscriber).await;
        assert_eq!(revision["revision"], 1, "{revision}");
        assert_eq!(revision["bucket"], revised0);
        nothing_more(subscriber).await;
    }
    nothing_more(&mut late).await;

    // Minute 3: minute 1 closes (minute 2 is empty: not sent); for the
    // lateness subscriber minute 0 and 1 close, minute 0 with all seven.
    publish(&node, "berlin", "m1", t0 + 3 * MINUTE + 1_000, 25.0, "ok");
    let series1 = series_bucket(&admin, "m1", t0 + MINUTE).await;
    for subscriber in [&mut live, &mut backfill] {
        let closed = next_close(subscriber).await;
        assert_eq!(closed["revision"], 0);
        assert_eq!(closed["bucket"], series1);
        nothing_more(subscriber).await;
    }
    let closed = next_close(&mut late).await;
    assert_eq!(closed["revision"], 0);
    assert_eq!(closed["bucket"], revised0, "the late reading was in time");
    let closed = next_close(&mut late).await;
    assert_eq!(closed["bucket"], series1);
    nothing_more(&mut late).await;

    // A second late reading: the next revision number.
    publish(&node, "berlin", "m1", t0 + MINUTE + 50_000, 31.0, "ok");
    let revised1 = series_bucket(&admin, "m1", t0 + MINUTE).await;
    assert_eq!(revised1["count"], 2);
    let revision = next_close(&mut live).await;
    assert_eq!(revision["revision"], 2);
    assert_eq!(revision["bucket"], revised1);
    let revision = next_close(&mut late).await;
    assert_eq!(revision["revision"], 1, "its own count");
    assert_eq!(revision["bucket"], revised1);

    // Open bucket subscriptions do not hold up a clean stop (their
    // streams end on the node's shutdown signal).
    let (status, _) = node.stop();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_feeds_apply_rights_row_filters_masks_and_the_cost_limit() {
    let dir = workdir(&[("meter", METER)], "");
    let node = start(dir.path());
    let admin = Gql::new(&node);
    let t0 = t0();
    let viewer = admin.with_token(&create_token(dir.path(), "viewer", "viewer"));
    let init =
        |gql: &Gql| json!({ "Authorization": format!("Bearer {}", gql.token().expect("token")) });
    let auditor = admin.with_token(&create_token(dir.path(), "auditor", "auditor"));

    // No `subscribe` right: refused.
    let mut refused = Subscriber::start_with(
        &node,
        Protocol::TransportWs,
        &subscription("m1", ""),
        json!({}),
        init(&auditor),
    )
    .await;
    assert_eq!(refusal(&mut refused).await, "FORBIDDEN");
    // A backfill of years in 1s buckets: over the cost limit.
    let mut costly = Subscriber::start(
        &node,
        Protocol::TransportWs,
        "subscription { meterBuckets(meter_id: \"m1\", every: \"1s\", since: \"2020-01-01T00:00:00Z\") { revision bucket { count } } }",
        json!({}),
    )
    .await;
    assert_eq!(refusal(&mut costly).await, "QUERY_TOO_COSTLY");
    // A lateness of more than the buckets one close may read: refused.
    let mut lax = Subscriber::start(
        &node,
        Protocol::TransportWs,
        &subscription("m1", ", lateness: \"1d\""),
        json!({}),
    )
    .await;
    assert_eq!(refusal(&mut lax).await, "BAD_ARGUMENT");

    // The viewer sees berlin (m1) rounded, with no `load` statistics;
    // lyon (m2) is hidden: its buckets never come.
    let mut berlin = Subscriber::start_with(
        &node,
        Protocol::TransportWs,
        &subscription("m1", ""),
        json!({}),
        init(&viewer),
    )
    .await;
    let mut lyon = Subscriber::start_with(
        &node,
        Protocol::TransportWs,
        &subscription("m2", ""),
        json!({}),
        init(&viewer),
    )
    .await;
    admin.wait_subscriptions("meter", 2).await;
    for (i, temp) in [21.0, 24.0, 27.0].iter().enumerate() {
        publish(&node, "berlin", "m1", t0 + 10_000 * i as i64, *temp, "ok");
        publish(&node, "lyon", "m2", t0 + 10_000 * i as i64, *temp, "ok");
    }
    publish(&node, "berlin", "m1", t0 + MINUTE, 30.0, "ok");
    publish(&node, "lyon", "m2", t0 + MINUTE, 30.0, "ok");
    let closed = next_close(&mut berlin).await;
    let seen = series_bucket(&viewer, "m1", t0).await;
    assert_eq!(closed["bucket"], seen, "as `series` shows it to the viewer");
    let temp = &closed["bucket"]["values"]["temp"];
    assert_eq!(temp["count"], 3);
    // Rounded to 10 before aggregating: 20, 20, 30.
    assert_eq!(temp["min"], 20.0, "{closed}");
    assert_eq!(temp["max"], 30.0);
    let clear = series_bucket(&admin, "m1", t0).await;
    assert_eq!(clear["values"]["temp"]["max"], 27.0);
    assert_eq!(clear["values"]["load"]["count"], 3);
    assert!(closed["bucket"]["values"]["load"].is_null(), "{closed}");
    nothing_more(&mut lyon).await;
    assert!(series_bucket(&viewer, "m2", t0).await.is_null());

    // Moving m1 to lyon hides it: its next close is not sent.
    publish(&node, "lyon", "m1", t0 + 2 * MINUTE, 30.0, "ok");
    nothing_more(&mut berlin).await;

    // The viewer's token revoked: the subscription ends with
    // UNAUTHENTICATED when its next bucket is due (m1 back in berlin).
    let out = run(
        dir.path(),
        &["--config", "meshlet.toml", "token", "revoke", "viewer"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = std::time::Instant::now() + WAIT;
    while viewer.post("{ products { name } }", json!({})).await.0 != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the token still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(&node, "berlin", "m1", t0 + 3 * MINUTE, 30.0, "ok");
    assert_eq!(refusal(&mut berlin).await, "UNAUTHENTICATED");
    let (status, _) = node.stop();
    assert!(status.success());
}

/// Every payload until none comes for a while (`ka`/`ping` skipped).
async fn drain(subscriber: &mut Subscriber) -> Vec<Value> {
    let mut out = Vec::new();
    let mut quiet = 0;
    while quiet < 3 {
        match subscriber.maybe_next(Duration::from_millis(500)).await {
            Some(Value::Null) => {}
            Some(payload) => {
                assert!(payload["errors"].is_null(), "{payload}");
                out.push(payload["data"]["meterBuckets"].clone());
                quiet = 0;
            }
            None => quiet += 1,
        }
    }
    out
}

/// Random streams with late events, published one by one: whatever the
/// order, the newest emission of every bucket equals `series` over it
/// at the end, every bucket holding events was sent, and revisions only
/// grow — with and without lateness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_emission_of_every_bucket_equals_series_on_random_streams() {
    use rand::{Rng, SeedableRng};
    let dir = workdir(&[("meter", METER)], "");
    let node = start(dir.path());
    let admin = Gql::new(&node);
    let t0 = t0();
    let every = 10_000;
    let feed = |lateness: &str| {
        format!(
            "subscription {{ meterBuckets(meter_id: \"r\", every: \"10s\", lateness: \"{lateness}\") {{ revision bucket {{ {BUCKET} }} }} }}"
        )
    };
    let mut strict = Subscriber::start(&node, Protocol::TransportWs, &feed("0s"), json!({})).await;
    let mut lax = Subscriber::start(&node, Protocol::TransportWs, &feed("25s"), json!({})).await;
    admin.wait_subscriptions("meter", 2).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(27);
    let mut t = t0;
    let mut times = Vec::new();
    for i in 0..70 {
        t += rng.random_range(0..4_000);
        let time = if rng.random_bool(0.25) {
            t - rng.random_range(0..40_000)
        } else {
            t
        };
        // Halves add up exactly in any order: sums compare exactly.
        let temp = f64::from(rng.random_range(0..80)) / 2.0;
        let state = ["ok", "warn", "fault"][i % 3];
        publish(&node, "berlin", "r", time, temp, state);
        times.push(time);
    }
    // A burst of late readings from one client (`-l`: one message per
    // line, so they tend to share a writer batch): each revises its bucket.
    let mut lines = String::new();
    for _ in 0..30 {
        let time = t - rng.random_range(0..60_000);
        let temp = f64::from(rng.random_range(0..80)) / 2.0;
        lines
            .push_str(&json!({ "ts": time, "temp": temp, "state": "warn", "load": 1 }).to_string());
        lines.push('\n');
        times.push(time);
    }
    publish_lines(&node, "site/berlin/meter/r", &lines);
    // Far ahead: closes every bucket before it, for both.
    let last = t + 10 * 60_000;
    publish(&node, "berlin", "r", last, 1.0, "ok");

    for (name, subscriber) in [("strict", &mut strict), ("lax", &mut lax)] {
        let emitted = drain(subscriber).await;
        let mut newest: std::collections::BTreeMap<String, (u64, Value)> = Default::default();
        let mut revision = 0;
        for e in &emitted {
            let r = e["revision"].as_u64().expect("revision");
            if r > 0 {
                assert!(r > revision, "{name}: revisions grow: {emitted:?}");
                revision = r;
            }
            let start = e["bucket"]["start"].as_str().expect("start").to_string();
            newest.insert(start, (r, e["bucket"].clone()));
        }
        let mut holding: Vec<i64> = times.iter().map(|t| t.div_euclid(every) * every).collect();
        holding.sort();
        holding.dedup();
        for start in &holding {
            let query = format!(
                "{{ meter(meter_id: \"r\") {{ series(since: \"{}\", until: \"{}\", every: \"10s\") {{ {BUCKET} }} }} }}",
                rfc3339(*start),
                rfc3339(start + every)
            );
            let data = admin.data(&query, json!({})).await;
            let expected = &data["meter"]["series"][0];
            let key = expected["start"].as_str().expect("a bucket").to_string();
            let (_, got) = newest
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: bucket {key} never sent"));
            assert_eq!(got, expected, "{name}: bucket {key}");
        }
        assert_eq!(newest.len(), holding.len(), "{name}: nothing else sent");
        assert!(revision > 0, "{name}: the stream had late events");
    }
    let (status, _) = node.stop();
    assert!(status.success());
}

/// `wallClock: true`: the node's clock closes the last bucket of an
/// entity that stopped sending (a later event revises it); without it,
/// that bucket waits for a newer event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_closes_the_bucket_of_an_entity_that_stopped_sending() {
    let dir = workdir(&[("meter", METER)], "");
    let node = start(dir.path());
    let admin = Gql::new(&node);
    let feed = |clock: &str| {
        format!(
            "subscription {{ meterBuckets(meter_id: \"w\", every: \"1s\"{clock}) {{ revision bucket {{ start count values {{ temp {{ min max }} }} }} }} }}"
        )
    };
    let mut clocked = Subscriber::start(
        &node,
        Protocol::TransportWs,
        &feed(", wallClock: true"),
        json!({}),
    )
    .await;
    let mut event_time =
        Subscriber::start(&node, Protocol::TransportWs, &feed(""), json!({})).await;
    admin.wait_subscriptions("meter", 2).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    publish(&node, "berlin", "w", now, 10.0, "ok");
    let closed = next_close(&mut clocked).await;
    assert_eq!(closed["revision"], 0);
    assert_eq!(closed["bucket"]["count"], 1);
    nothing_more(&mut event_time).await;
    // The same instant again, after the clock closed it: a revision.
    publish(&node, "berlin", "w", now, 12.0, "ok");
    let revised = next_close(&mut clocked).await;
    assert_eq!(revised["revision"], 1, "{revised}");
    assert_eq!(revised["bucket"]["start"], closed["bucket"]["start"]);
    assert_eq!(revised["bucket"]["count"], 2);
    assert_eq!(revised["bucket"]["values"]["temp"]["max"], 12.0);
    nothing_more(&mut clocked).await;
    nothing_more(&mut event_time).await;
    let (status, _) = node.stop();
    assert!(status.success());
}
