use super::*;

fn metric(
    name: Option<&str>,
    alias: Option<u64>,
    datatype: Option<u32>,
    value: MetricValue,
) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias,
        datatype,
        value: Some(value),
        ..Metric::default()
    }
}

fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(1_700_000_000_000),
        metrics,
        seq,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn send(host: &mut Host, topic: &str, bytes: &[u8], now: Instant) -> Handled {
    let topic = Topic::parse(topic).expect("namespace").expect("topic");
    host.handle(&topic, bytes, now)
}

fn births(host: &mut Host, now: Instant) {
    let nbirth = payload(
        Some(0),
        vec![metric(
            Some("Node Control/Rebirth"),
            Some(0),
            Some(datatype::BOOLEAN),
            MetricValue::BooleanValue(false),
        )],
    );
    let handled = send(host, "spBv1.0/plant/NBIRTH/gw1", &nbirth, now);
    assert!(handled.problems.is_empty(), "{:?}", handled.problems);
    let dbirth = payload(
        Some(1),
        vec![
            metric(
                Some("Temperature"),
                Some(1),
                Some(datatype::FLOAT),
                MetricValue::FloatValue(21.5),
            ),
            metric(
                Some("Count"),
                Some(2),
                Some(datatype::INT32),
                MetricValue::IntValue(-3i32 as u32),
            ),
        ],
    );
    let handled = send(host, "spBv1.0/plant/DBIRTH/gw1/press1", &dbirth, now);
    assert!(handled.problems.is_empty(), "{:?}", handled.problems);
    assert_eq!(handled.updates[0].kind, UpdateKind::Birth);
    assert_eq!(
        handled.updates[0].metrics[1],
        ("Count".to_string(), Json::from(-3))
    );
}

#[test]
fn topics_parse_and_malformed_ones_are_problems() {
    assert_eq!(Topic::parse("plant/x"), None);
    assert_eq!(Topic::parse("spBv1.0/STATE/scada-host"), None);
    let t = Topic::parse("spBv1.0/g/DDATA/n/d").unwrap().unwrap();
    assert_eq!(
        (t.group, t.kind, t.edge_node, t.device),
        ("g", MessageType::DData, "n", Some("d"))
    );
    assert_eq!(
        Topic::parse("spBv1.0/g/DDATA/n"),
        Some(Err(Problem::BadTopic))
    );
    assert_eq!(
        Topic::parse("spBv1.0/g/NDATA/n/d"),
        Some(Err(Problem::BadTopic))
    );
    assert_eq!(
        Topic::parse("spBv1.0/g/WHAT/n"),
        Some(Err(Problem::BadTopic))
    );
}

#[test]
fn data_by_alias_resolves_through_the_birth() {
    let mut host = Host::new();
    let now = Instant::now();
    births(&mut host, now);
    let ddata = payload(
        Some(2),
        vec![metric(None, Some(1), None, MetricValue::FloatValue(22.0))],
    );
    let handled = send(&mut host, "spBv1.0/plant/DDATA/gw1/press1", &ddata, now);
    assert!(handled.problems.is_empty() && handled.rebirth.is_none());
    assert_eq!(
        handled.updates[0].metrics,
        vec![("Temperature".to_string(), Json::from(22.0))]
    );
    assert_eq!(handled.updates[0].device.as_deref(), Some("press1"));
}

#[test]
fn seq_wraps_after_255() {
    let mut host = Host::new();
    let now = Instant::now();
    let nbirth = payload(Some(254), vec![]);
    send(&mut host, "spBv1.0/g/NBIRTH/n", &nbirth, now);
    for seq in [255, 0, 1] {
        let handled = send(
            &mut host,
            "spBv1.0/g/NDATA/n",
            &payload(Some(seq), vec![]),
            now,
        );
        assert!(
            handled.problems.is_empty(),
            "seq {seq}: {:?}",
            handled.problems
        );
    }
}

#[test]
fn a_seq_gap_keeps_the_data_and_requests_one_rebirth() {
    let mut host = Host::new();
    let now = Instant::now();
    births(&mut host, now);
    let ddata = payload(
        Some(5),
        vec![metric(None, Some(2), None, MetricValue::IntValue(7))],
    );
    let handled = send(&mut host, "spBv1.0/plant/DDATA/gw1/press1", &ddata, now);
    assert_eq!(handled.problems, vec![Problem::SeqGap]);
    assert_eq!(
        handled.updates[0].metrics,
        vec![("Count".to_string(), Json::from(7))]
    );
    let rebirth = handled.rebirth.expect("rebirth requested");
    assert_eq!(rebirth.topic, "spBv1.0/plant/NCMD/gw1");
    let ncmd = Payload::decode(rebirth.payload.as_slice()).unwrap();
    assert_eq!(ncmd.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
    assert_eq!(ncmd.metrics[0].value, Some(MetricValue::BooleanValue(true)));
    // Another gap right away: counted, but no second command yet.
    let handled = send(
        &mut host,
        "spBv1.0/plant/DDATA/gw1/press1",
        &payload(Some(9), vec![]),
        now,
    );
    assert_eq!(handled.problems, vec![Problem::SeqGap]);
    assert!(handled.rebirth.is_none());
    let later = now + REBIRTH_INTERVAL;
    let handled = send(
        &mut host,
        "spBv1.0/plant/DDATA/gw1/press1",
        &payload(Some(20), vec![]),
        later,
    );
    assert!(handled.rebirth.is_some());
}

#[test]
fn unknown_aliases_and_missing_births_request_a_rebirth() {
    let mut host = Host::new();
    let now = Instant::now();
    let handled = send(
        &mut host,
        "spBv1.0/g/NDATA/n",
        &payload(Some(3), vec![]),
        now,
    );
    assert_eq!(handled.problems, vec![Problem::NoBirth]);
    assert!(handled.rebirth.is_some());

    let mut host = Host::new();
    births(&mut host, now);
    let ddata = payload(
        Some(2),
        vec![metric(None, Some(99), None, MetricValue::IntValue(1))],
    );
    let handled = send(&mut host, "spBv1.0/plant/DDATA/gw1/press1", &ddata, now);
    assert_eq!(handled.problems, vec![Problem::UnknownAlias]);
    assert!(handled.updates[0].metrics.is_empty());
    assert!(handled.rebirth.is_some());
}

#[test]
fn deaths_forget_the_birth() {
    let mut host = Host::new();
    let now = Instant::now();
    births(&mut host, now);
    let handled = send(
        &mut host,
        "spBv1.0/plant/DDEATH/gw1/press1",
        &payload(Some(2), vec![]),
        now,
    );
    assert_eq!(handled.updates[0].kind, UpdateKind::Death);
    let ddata = payload(
        Some(3),
        vec![metric(None, Some(1), None, MetricValue::FloatValue(1.0))],
    );
    let handled = send(&mut host, "spBv1.0/plant/DDATA/gw1/press1", &ddata, now);
    assert_eq!(handled.problems, vec![Problem::NoBirth]);
    let handled = send(
        &mut host,
        "spBv1.0/plant/NDEATH/gw1",
        &payload(None, vec![]),
        now,
    );
    assert_eq!(handled.updates[0].kind, UpdateKind::Death);
    assert!(handled.problems.is_empty());
}

#[test]
fn garbage_and_mistyped_values_are_problems_not_panics() {
    let mut host = Host::new();
    let now = Instant::now();
    let handled = send(&mut host, "spBv1.0/g/NBIRTH/n", &[0xff, 0xff, 0xff], now);
    assert_eq!(handled.problems, vec![Problem::BadPayload]);
    let nbirth = payload(
        Some(0),
        vec![metric(
            Some("x"),
            Some(1),
            Some(datatype::BOOLEAN),
            MetricValue::StringValue("no".into()),
        )],
    );
    let handled = send(&mut host, "spBv1.0/g/NBIRTH/n", &nbirth, now);
    assert_eq!(handled.problems, vec![Problem::BadValue]);
    let null = Metric {
        name: Some("y".into()),
        datatype: Some(datatype::DOUBLE),
        is_null: Some(true),
        ..Metric::default()
    };
    let handled = send(
        &mut host,
        "spBv1.0/g/NDATA/n",
        &payload(Some(1), vec![null]),
        now,
    );
    assert_eq!(
        handled.updates[0].metrics,
        vec![("y".to_string(), Json::Null)]
    );
}

#[test]
fn historical_metrics_are_updates_at_their_own_time() {
    let mut host = Host::new();
    let now = Instant::now();
    births(&mut host, now);
    let past = Metric {
        alias: Some(1),
        timestamp: Some(1_600_000_000_000),
        is_historical: Some(true),
        value: Some(MetricValue::FloatValue(18.0)),
        ..Metric::default()
    };
    let current = metric(None, Some(2), None, MetricValue::IntValue(4));
    let ddata = payload(Some(2), vec![past, current]);
    let handled = send(&mut host, "spBv1.0/plant/DDATA/gw1/press1", &ddata, now);
    assert!(handled.problems.is_empty(), "{:?}", handled.problems);
    let seen: Vec<_> = handled
        .updates
        .iter()
        .map(|u| (u.timestamp, u.metrics.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                Some(1_700_000_000_000),
                vec![("Count".to_string(), Json::from(4))]
            ),
            (
                Some(1_600_000_000_000),
                vec![("Temperature".to_string(), Json::from(18.0))]
            ),
        ]
    );
}

fn bd_seq(value: u64) -> Metric {
    metric(
        Some(BD_SEQ_METRIC),
        None,
        Some(datatype::UINT64),
        MetricValue::LongValue(value),
    )
}

#[test]
fn an_ndeath_of_an_earlier_session_is_ignored() {
    let mut host = Host::new();
    let now = Instant::now();
    // Session 3 is born, with a device.
    let nbirth = payload(Some(0), vec![bd_seq(3)]);
    assert!(send(&mut host, "spBv1.0/plant/NBIRTH/gw1", &nbirth, now)
        .problems
        .is_empty());
    let dbirth = payload(
        Some(1),
        vec![metric(
            Some("Temperature"),
            Some(1),
            Some(datatype::FLOAT),
            MetricValue::FloatValue(1.0),
        )],
    );
    send(&mut host, "spBv1.0/plant/DBIRTH/gw1/press1", &dbirth, now);

    // Session 2's will, delivered late: no death, the birth stays.
    let stale = payload(None, vec![bd_seq(2)]);
    let handled = send(&mut host, "spBv1.0/plant/NDEATH/gw1", &stale, now);
    assert_eq!(handled.problems, vec![Problem::StaleDeath]);
    assert!(handled.updates.is_empty());
    assert!(handled.rebirth.is_none(), "the picture is still complete");
    let ddata = payload(
        Some(2),
        vec![metric(None, Some(1), None, MetricValue::FloatValue(2.0))],
    );
    let handled = send(&mut host, "spBv1.0/plant/DDATA/gw1/press1", &ddata, now);
    assert!(handled.problems.is_empty(), "{:?}", handled.problems);
    assert_eq!(handled.updates[0].metrics[0].1, Json::from(2.0));

    // Session 3's own death: the node and its device go down.
    let death = payload(None, vec![bd_seq(3)]);
    let handled = send(&mut host, "spBv1.0/plant/NDEATH/gw1", &death, now);
    assert!(handled.problems.is_empty());
    assert_eq!(handled.updates.len(), 2);
    assert!(handled.updates.iter().all(|u| u.kind == UpdateKind::Death));

    // Without a bdSeq (Sparkplug 2.2 edges) a death always counts.
    send(
        &mut host,
        "spBv1.0/plant/NBIRTH/gw1",
        &payload(Some(0), vec![]),
        now,
    );
    let handled = send(
        &mut host,
        "spBv1.0/plant/NDEATH/gw1",
        &payload(None, vec![bd_seq(9)]),
        now,
    );
    assert!(handled.problems.is_empty());
    assert_eq!(handled.updates[0].kind, UpdateKind::Death);
}
