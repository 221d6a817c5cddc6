//! Time-series reads through the real binary: newest-first history paging
//! (`last`/`before`) over sealed chunks and the open tail, with cursors
//! that round-trip between directions, and `series` buckets compared with
//! a brute-force computation over the raw events pushed (in random
//! arrival order, so many arrive late), and fleet aggregates compared
//! with a brute-force grouping — all under a role's row filter and masks.

use crate::common;

use std::collections::BTreeMap;

use common::graphql::Gql;
use common::{create_token, NodeBuilder, NodeProcess};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// A probe pushed over HTTP with its event time in the payload; small
/// chunks so history spans many sealed chunks and an open tail.
const PROBE: &str = r#"
product: probe
version: 1
domain: test
owner: test@example.com
key: probe_id
fields:
  probe_id: { type: string, required: true }
  site:     { type: string }
  temp:     { type: float }
  state:    { type: string, enum: [ok, warn, fault] }
  secret:   { type: string, classification: pii }
  load:     { type: int }
sources:
  - http: { format: ndjson, event_time: /ts }
quality: { on_invalid: reject }
access:
  viewer:
    read: true
    where: "site == 'berlin'"
    mask: { temp: { round: 10 }, secret: redact, load: null }
  admin: { read: true, write: true, erase: true }
"#;

const CONFIG: &str = "data_dir = \"data\"\nproducts = [\"products\"]\n[store]\nhistory_chunk_events = 8\nhistory_block_events = 4\n";

fn node() -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/probe.yaml"), PROBE).expect("product");
    std::fs::write(dir.path().join("meshlet.toml"), CONFIG).expect("config");
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    (dir, node)
}

/// Pushes `lines` (NDJSON) to the probe product; must be accepted whole.
async fn push(node: &NodeProcess, lines: &[Value]) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let response = reqwest::Client::new()
        .post(node.url("/ingest/probe"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("push");
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
}

/// `n` readings of probe `id` at `site`, one a second from t0, temp = i.
fn readings(id: &str, site: &str, n: usize) -> Vec<Value> {
    (1..=n)
        .map(|i| {
            json!({ "probe_id": id, "site": site, "temp": i as f64 + 0.4,
                    "state": "ok", "secret": format!("s{i}"),
                    "ts": 1_700_000_000_000i64 + 1000 * i as i64 })
        })
        .collect()
}

/// Versions and page info of one history page of probe `id`.
async fn history_page(gql: &Gql, id: &str, args: &str) -> (Vec<u64>, Value, Value) {
    let query = format!(
        "{{ probe(probe_id: \"{id}\") {{ history({args}) {{ edges {{ cursor node {{ version values {{ temp secret }} }} }} pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} }} }} }}"
    );
    let data = gql.data(&query, json!({})).await;
    let history = &data["probe"]["history"];
    let edges = history["edges"].as_array().expect("edges").clone();
    let versions = edges
        .iter()
        .map(|e| {
            let v = e["node"]["version"].as_u64().expect("version");
            assert_eq!(e["cursor"], v.to_string(), "a cursor is the version");
            v
        })
        .collect();
    (versions, Value::Array(edges), history["pageInfo"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_newest_first_with_cursors_both_ways_under_policies() {
    let (dir, node) = node();
    let admin = Gql::new(&node);
    // 37 events: four sealed chunks of 8 and a tail of blocks/events.
    push(&node, &readings("p1", "berlin", 37)).await;
    push(&node, &readings("p2", "lyon", 3)).await;

    // The latest 5, oldest first within the page, with older ones before.
    let (versions, _, info) = history_page(&admin, "p1", "last: 5").await;
    assert_eq!(versions, [33, 34, 35, 36, 37]);
    assert_eq!(info["hasPreviousPage"], true);
    assert_eq!(info["hasNextPage"], false);
    assert_eq!(info["startCursor"], "33");

    // Backwards to the start, 7 at a time: every event once, in order.
    let mut before: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let args = match &before {
            Some(c) => format!("last: 7, before: \"{c}\""),
            None => "last: 7".to_string(),
        };
        let (versions, _, info) = history_page(&admin, "p1", &args).await;
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        seen.splice(0..0, versions);
        if info["hasPreviousPage"] != true {
            break;
        }
        before = info["startCursor"].as_str().map(str::to_string);
    }
    assert_eq!(seen, (1..=37).collect::<Vec<u64>>());

    // Cursors round-trip: a backward page's cursor pages forward and back.
    let (versions, _, info) = history_page(&admin, "p1", "last: 4, before: \"20\"").await;
    assert_eq!(versions, [16, 17, 18, 19]);
    let end = info["endCursor"].as_str().expect("endCursor").to_string();
    let (forward, _, info) =
        history_page(&admin, "p1", &format!("first: 3, after: \"{end}\"")).await;
    assert_eq!(forward, [20, 21, 22]);
    assert_eq!(info["hasNextPage"], true);
    let start = info["startCursor"]
        .as_str()
        .expect("startCursor")
        .to_string();
    let (back, _, _) = history_page(&admin, "p1", &format!("last: 2, before: \"{start}\"")).await;
    assert_eq!(back, [18, 19]);
    // Both bounds: what lies strictly between two cursors, newest end.
    let (between, _, info) =
        history_page(&admin, "p1", "last: 3, after: \"10\", before: \"12\"").await;
    assert_eq!(between, [11]);
    assert_eq!(info["hasPreviousPage"], false);
    // With a time window: event time in [since, until).
    let (windowed, _, _) = history_page(
        &admin,
        "p1",
        "last: 3, since: \"2023-11-14T22:13:25Z\", until: \"2023-11-14T22:13:30Z\"",
    )
    .await;
    assert_eq!(windowed, [7, 8, 9]);

    // `first` and `last` together are refused, saying why.
    let errors = admin
        .errors(
            r#"{ probe(probe_id: "p1") { history(first: 2, last: 2) { nodes { version } } } }"#,
            json!({}),
        )
        .await;
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not both")),
        "{errors:?}"
    );

    // A viewer sees rounded temps and no secret, newest first as well, and
    // nothing of an entity its row filter hides.
    let viewer = admin.with_token(&create_token(dir.path(), "viewer", "viewer"));
    let (versions, edges, _) = history_page(&viewer, "p1", "last: 2").await;
    assert_eq!(versions, [36, 37]);
    assert_eq!(
        edges[0]["node"]["values"]["temp"], 40.0,
        "36.4 rounded to 10"
    );
    assert_eq!(edges[1]["node"]["values"]["secret"], "[redacted]");
    let (clear, edges, _) = history_page(&admin, "p1", "last: 1").await;
    assert_eq!(clear, [37]);
    assert_eq!(edges[0]["node"]["values"]["temp"], 37.4);
    let data = viewer
        .data(
            r#"{ probe(probe_id: "p2") { history(last: 5) { nodes { version } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["probe"], Value::Null, "p2 is in lyon: {data}");

    let (status, _) = node.stop();
    assert!(status.success());
}

/// One raw reading as pushed: event time (ms), temp, state (each may be absent).
#[derive(Clone, Debug)]
struct Raw {
    ts: i64,
    temp: Option<f64>,
    state: Option<&'static str>,
}

/// What one bucket should hold, computed the obvious way from `raws` (in
/// arrival order) for window [since, until) ms, buckets `every` ms wide
/// aligned to the epoch; `round`: the viewer's mask step on temp.
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
        let temps: Vec<f64> = events
            .iter()
            .filter_map(|r| r.temp)
            .map(|t| match round {
                Some(step) => (t / step).round() * step,
                None => t,
            })
            .collect();
        let temp = if temps.is_empty() {
            Value::Null
        } else {
            let sum: f64 = temps.iter().sum();
            json!({
                "count": temps.len(),
                "min": temps.iter().copied().fold(f64::INFINITY, f64::min),
                "max": temps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                "sum": sum,
                "avg": sum / temps.len() as f64,
                "first": temps[0],
                "last": temps[temps.len() - 1],
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

/// Whether two JSON values are equal, numbers within 1e-6.
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

fn millis(rfc3339: &Value) -> i64 {
    let text = rfc3339.as_str().expect("a DateTime");
    let t: jiff::Timestamp = text.parse().expect("RFC 3339");
    t.as_millisecond()
}

const SERIES: &str = "query S($id: String!, $since: DateTime, $until: DateTime, $every: Duration!, $fill: SeriesFill) {
  probe(probe_id: $id) { series(since: $since, until: $until, every: $every, fill: $fill) {
    start end count values { temp { count min max sum avg first last } state { longest values { value count seconds } } } } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_buckets_equal_brute_force_over_random_streams_with_late_events() {
    let (dir, node) = node();
    let admin = Gql::new(&node);
    let viewer = admin.with_token(&create_token(dir.path(), "viewer", "viewer"));
    let base = 1_700_000_000_000i64;
    for seed in [7u64, 1234, 99] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let id = format!("r{seed}");
        // Distinct event times over two hours with holes, pushed in random
        // order: most events arrive after newer ones (late).
        let mut times: Vec<i64> = (0..7_200_000i64).step_by(1_500).collect();
        times.shuffle(&mut rng);
        times.truncate(rng.random_range(50..400));
        let raws: Vec<Raw> = times
            .iter()
            .map(|t| Raw {
                ts: base + t + rng.random_range(0..1_000),
                temp: rng
                    .random_bool(0.8)
                    .then(|| f64::from(rng.random_range(-400i32..1200)) / 8.0),
                state: rng
                    .random_bool(0.6)
                    .then(|| *["ok", "warn", "fault"].choose(&mut rng).expect("a state")),
            })
            .collect();
        let lines: Vec<Value> = raws
            .iter()
            .map(|r| {
                let mut line = json!({ "probe_id": id, "site": "berlin", "ts": r.ts });
                if let Some(t) = r.temp {
                    line["temp"] = json!(t);
                }
                if let Some(s) = r.state {
                    line["state"] = json!(s);
                }
                line
            })
            .collect();
        for batch in lines.chunks(64) {
            push(&node, batch).await;
        }

        let since = base + rng.random_range(0..1_800_000);
        let until = since + rng.random_range(600_000..5_400_000);
        let every_min = [1i64, 5, 10][rng.random_range(0..3)];
        let rfc = |ms: i64| {
            jiff::Timestamp::from_millisecond(ms)
                .expect("time")
                .to_string()
        };
        for (client, round) in [(&admin, None), (&viewer, Some(10.0))] {
            let variables = json!({ "id": id, "since": rfc(since), "until": rfc(until),
                                    "every": format!("{every_min}m"), "fill": "NULL" });
            let data = client.data(SERIES, variables).await;
            let got: Vec<Value> = data["probe"]["series"]
                .as_array()
                .expect("buckets")
                .iter()
                .map(|b| {
                    let mut b = b.clone();
                    b["start"] = json!(millis(&b["start"]));
                    b["end"] = json!(millis(&b["end"]));
                    // Per-field statistics sit under `values`; the
                    // brute force lists them beside start, end and count.
                    let stats = b["values"].take();
                    match (b.as_object_mut(), stats) {
                        (Some(bucket), Value::Object(stats)) => {
                            bucket.remove("values");
                            bucket.extend(stats);
                        }
                        (_, other) => panic!("a bucket without values: {other:#}"),
                    }
                    b
                })
                .collect();
            let want = expected(&raws, since, until, every_min * 60_000, round);
            assert_eq!(got.len(), want.len(), "seed {seed}");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    close(g, w),
                    "seed {seed}, role {}:\n got {g:#}\nwant {w:#}",
                    client.token().map_or("admin", |_| "viewer")
                );
            }
        }

        // Fill NONE leaves empty buckets out; the rest are the same.
        let variables = json!({ "id": id, "since": rfc(since), "until": rfc(until),
                                "every": format!("{every_min}m") });
        let data = admin.data(SERIES, variables).await;
        let counts: Vec<u64> = data["probe"]["series"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b["count"].as_u64().expect("count"))
            .collect();
        assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
        let want = expected(&raws, since, until, every_min * 60_000, None);
        assert_eq!(
            counts.len(),
            want.iter().filter(|b| b["count"] != 0).count()
        );
    }

    // The row filter hides a lyon probe's series from the viewer.
    push(&node, &readings("l1", "lyon", 5)).await;
    let query = r#"{ probe(probe_id: "l1") { series(since: "2023-11-14T00:00:00Z", until: "2023-11-15T00:00:00Z", every: "1h") { count } } }"#;
    assert_eq!(
        admin.data(query, json!({})).await["probe"]["series"][0]["count"],
        5
    );
    assert_eq!(viewer.data(query, json!({})).await["probe"], Value::Null);

    // A 30-day chart in 5-minute buckets (8,640) of count + min/max/avg
    // passes the query cost (a bucket's `values` wrapper is free); its
    // buckets hold every event a 1-day bucketing finds.
    let month = |every: &str| {
        format!(
            r#"{{ probe(probe_id: "r7") {{ series(since: "2023-10-20T00:00:00Z", until: "2023-11-19T00:00:00Z", every: "{every}") {{ count values {{ temp {{ min max avg }} }} }} }} }}"#
        )
    };
    let data = admin.data(&month("5m"), json!({})).await;
    let buckets = data["probe"]["series"].as_array().expect("buckets");
    let total = |buckets: &[Value]| -> u64 {
        buckets
            .iter()
            .map(|b| b["count"].as_u64().expect("count"))
            .sum()
    };
    let daily = admin.data(&month("1d"), json!({})).await;
    let daily = daily["probe"]["series"].as_array().expect("buckets");
    assert!(total(buckets) > 0);
    assert_eq!(total(buckets), total(daily));
    assert!(buckets.len() > daily.len());

    // Too many buckets for the cost limit (1-minute buckets over 30 days),
    // or a bad width, are refused before any read, and counted.
    let errors_before = admin
        .metric(r#"meshlet_graphql_requests_total{outcome="error"}"#)
        .await
        .unwrap_or(0.0);
    let refused_before = admin
        .metric(r#"meshlet_graphql_requests_total{outcome="refused"}"#)
        .await
        .unwrap_or(0.0);
    let errors = admin.errors(&month("1m"), json!({})).await;
    assert_eq!(
        errors[0]["extensions"]["code"], "QUERY_TOO_COSTLY",
        "{errors:?}"
    );
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 50000")),
        "{errors:?}"
    );
    let errors = admin
        .errors(
            r#"{ probe(probe_id: "r7") { series(every: "soon") { count } } }"#,
            json!({}),
        )
        .await;
    assert!(format!("{errors:?}").contains("Duration"), "{errors:?}");
    let errors_after = admin
        .metric(r#"meshlet_graphql_requests_total{outcome="error"}"#)
        .await
        .unwrap_or(0.0);
    let refused_after = admin
        .metric(r#"meshlet_graphql_requests_total{outcome="refused"}"#)
        .await
        .unwrap_or(0.0);
    assert_eq!(
        (errors_after - errors_before) + (refused_after - refused_before),
        2.0
    );

    let (status, _) = node.stop();
    assert!(status.success());
}

/// One instance of the fleet: site, state, temp, load (some absent).
type Member = (&'static str, Option<&'static str>, Option<f64>, Option<i64>);
/// (site, state) of a group.
type GroupKey = (String, Option<String>);
/// (temp, load) of a member as the role sees them.
type Numbers = (Option<f64>, Option<i64>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_aggregates_equal_brute_force_grouping_under_row_filters_and_masks() {
    let (dir, node) = node();
    let admin = Gql::new(&node);
    let viewer = admin.with_token(&create_token(dir.path(), "viewer", "viewer"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xa66);
    let sites = ["berlin", "lyon", "paris"];
    let states = ["ok", "warn", "fault"];
    // (site, state, temp, load) per instance; some fields absent.
    let fleet: Vec<Member> = (0..1_100)
        .map(|_| {
            (
                *sites.choose(&mut rng).expect("site"),
                rng.random_bool(0.9)
                    .then(|| *states.choose(&mut rng).expect("state")),
                rng.random_bool(0.8)
                    .then(|| f64::from(rng.random_range(-200i32..900)) / 4.0),
                rng.random_bool(0.7).then(|| rng.random_range(0..100i64)),
            )
        })
        .collect();
    let lines: Vec<Value> = fleet
        .iter()
        .enumerate()
        .map(|(i, (site, state, temp, load))| {
            let mut line =
                json!({ "probe_id": format!("f{i:04}"), "site": site, "ts": 1_700_000_000_000i64 });
            if let Some(s) = state {
                line["state"] = json!(s);
            }
            if let Some(t) = temp {
                line["temp"] = json!(t);
            }
            if let Some(l) = load {
                line["load"] = json!(l);
            }
            line
        })
        .collect();
    for batch in lines.chunks(200) {
        push(&node, batch).await;
    }

    const QUERY: &str = "query A($filter: ProbeFilter, $by: [ProbeGroupField!]) {
      probeAggregate(filter: $filter, groupBy: $by) { groups {
        key { site state } count min { temp load } max { temp load } avg { temp load } } } }";
    // The expected groups: (site, state) → count, temp and load statistics.
    let expect = |by_state: bool, only_fault: bool, berlin_only: bool, round: bool| {
        let mut groups: BTreeMap<GroupKey, Vec<Numbers>> = BTreeMap::new();
        for (site, state, temp, load) in &fleet {
            if (only_fault && *state != Some("fault")) || (berlin_only && *site != "berlin") {
                continue;
            }
            let temp = temp.map(|t| if round { (t / 10.0).round() * 10.0 } else { t });
            let load = if round { None } else { *load };
            let key = (
                site.to_string(),
                if by_state {
                    state.map(str::to_string)
                } else {
                    None
                },
            );
            groups.entry(key).or_default().push((temp, load));
        }
        groups
            .into_iter()
            .map(|((site, state), members)| {
                let temps: Vec<f64> = members.iter().filter_map(|m| m.0).collect();
                let loads: Vec<f64> = members
                    .iter()
                    .filter_map(|m| m.1)
                    .map(|l| l as f64)
                    .collect();
                let stat = |xs: &[f64], f: &dyn Fn(&[f64]) -> f64| {
                    if xs.is_empty() {
                        Value::Null
                    } else {
                        json!(f(xs))
                    }
                };
                let min = |xs: &[f64]| xs.iter().copied().fold(f64::INFINITY, f64::min);
                let max = |xs: &[f64]| xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let avg = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
                json!({
                    "key": { "site": site, "state": state },
                    "count": members.len(),
                    "min": { "temp": stat(&temps, &min), "load": stat(&loads, &min) },
                    "max": { "temp": stat(&temps, &max), "load": stat(&loads, &max) },
                    "avg": { "temp": stat(&temps, &avg), "load": stat(&loads, &avg) },
                })
            })
            .collect::<Vec<Value>>()
    };
    let check = |got: &Value, want: Vec<Value>, what: &str| {
        let got = got["probeAggregate"]["groups"]
            .as_array()
            .expect("groups")
            .clone();
        assert_eq!(got.len(), want.len(), "{what}: {got:#?}");
        for (g, w) in got.iter().zip(&want) {
            assert!(close(g, w), "{what}:\n got {g:#}\nwant {w:#}");
        }
    };

    let all = admin.data(QUERY, json!({ "by": ["site", "state"] })).await;
    // Null sorts first, so the BTreeMap's None-first order is the API's.
    check(
        &all,
        expect(true, false, false, false),
        "admin by site and state",
    );
    let faults = admin
        .data(
            QUERY,
            json!({ "by": ["site"], "filter": { "state": { "eq": "fault" } } }),
        )
        .await;
    check(
        &faults,
        expect(false, true, false, false),
        "admin faults by site",
    );
    // The viewer: berlin only, temps rounded to 10, load hidden.
    let seen = viewer.data(QUERY, json!({ "by": ["site", "state"] })).await;
    check(
        &seen,
        expect(true, false, true, true),
        "viewer by site and state",
    );
    // No groupBy: one group of everything the role sees.
    let one = viewer.data(QUERY, json!({})).await;
    let groups = one["probeAggregate"]["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1);
    let berlin = fleet.iter().filter(|f| f.0 == "berlin").count();
    assert_eq!(groups[0]["count"], berlin);
    assert_eq!(groups[0]["key"], json!({ "site": null, "state": null }));

    // Grouping by the key makes more groups than allowed: refused.
    let errors = admin.errors(QUERY, json!({ "by": ["probe_id"] })).await;
    assert_eq!(
        errors[0]["extensions"]["code"], "AGGREGATE_TOO_LARGE",
        "{errors:?}"
    );
    // Aggregates count in the query cost: each `groups` as 1000 groups,
    // so four full aggregates in one query are refused before any scan.
    let full =
        "groups { key { site state } count min { temp load } max { temp load } avg { temp load } }";
    let four: String = ["a", "b", "c", "d"]
        .iter()
        .map(|alias| format!("{alias}: probeAggregate {{ {full} }} "))
        .collect();
    let errors = admin.errors(&format!("{{ {four} }}"), json!({})).await;
    assert!(
        format!("{errors:?}").contains("at most 50000"),
        "{errors:?}"
    );

    let (status, _) = node.stop();
    assert!(status.success());
}
