//! A Sparkplug B host application: birth certificates, aliases, sequence
//! numbers and rebirth requests, per edge node and device.
//!
//! The state machine is pure (bytes and a clock reading in, decoded updates
//! and at most one rebirth request out) so it is tested without a broker;
//! the ingestor turns its [`Update`]s into product records and publishes
//! its [`Rebirth`] requests.
//!
//! Rules (Sparkplug 3.0, host application):
//! - NBIRTH resets the node: its `seq` starts the sequence, its metrics
//!   (name, alias, datatype) replace the node's alias table, every device
//!   of the node is forgotten (they re-announce with DBIRTH).
//! - Every later node message (NDATA, DBIRTH, DDATA, DDEATH) carries the
//!   previous `seq` + 1, wrapping 255 → 0. A gap means messages were lost:
//!   the data that did arrive is still applied, and a rebirth is requested.
//! - Data metrics may carry only an alias: it is resolved through the birth
//!   of the node or device. An unknown alias, data from a node or device
//!   without a birth, or a birth metric without a name means the host's
//!   picture is incomplete: the metric is skipped, a rebirth is requested.
//! - Historical metrics (`is_historical`) become updates of their own at
//!   their metric timestamp, so the store records them as (late) history
//!   instead of overwriting the current value.
//! - NDEATH and DDEATH produce a [`UpdateKind::Death`] update (an NDEATH
//!   also one for every device the node had announced); the ingestor
//!   records it as the entity going offline (see `product::source`).
//! - An NDEATH is the edge node's MQTT will, registered at CONNECT with
//!   the `bdSeq` metric its next NBIRTH carries too. A broker may deliver
//!   the will of an *earlier* session late (the old connection timed out
//!   after the node had already reconnected and sent a new NBIRTH); such
//!   an NDEATH's `bdSeq` differs from the current birth's, and it is
//!   ignored ([`Problem::StaleDeath`]) rather than marking a live node
//!   dead. Without a `bdSeq` on either side (Sparkplug 2.2 edges) every
//!   NDEATH counts.
//! - A rebirth request (NCMD `Node Control/Rebirth` = true) is sent at most
//!   once per [`REBIRTH_INTERVAL`] per node, so a flood of bad messages
//!   does not become a flood of commands; it is sent again if the node
//!   stays silent about it.
//!
//! Bad input never panics: an undecodable payload, a malformed topic or a
//! value that does not fit its datatype is a [`Problem`], counted by the
//! caller under [`Problem::name`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::Value as Json;

use super::proto::{datatype, Metric, MetricValue, Payload};

/// The topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";
/// The metric that ties an NBIRTH to the NDEATH (MQTT will) of the same
/// session.
pub const BD_SEQ_METRIC: &str = "bdSeq";
/// The metric a host writes to ask an edge node for new births.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";
/// The shortest time between two rebirth requests to one node.
pub const REBIRTH_INTERVAL: Duration = Duration::from_secs(5);

/// The message types of the topic's third level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    NBirth,
    NDeath,
    DBirth,
    DDeath,
    NData,
    DData,
    NCmd,
    DCmd,
    State,
}

impl MessageType {
    fn parse(text: &str) -> Option<MessageType> {
        Some(match text {
            "NBIRTH" => MessageType::NBirth,
            "NDEATH" => MessageType::NDeath,
            "DBIRTH" => MessageType::DBirth,
            "DDEATH" => MessageType::DDeath,
            "NDATA" => MessageType::NData,
            "DDATA" => MessageType::DData,
            "NCMD" => MessageType::NCmd,
            "DCMD" => MessageType::DCmd,
            "STATE" => MessageType::State,
            _ => return None,
        })
    }

    fn is_device(self) -> bool {
        matches!(
            self,
            MessageType::DBirth | MessageType::DDeath | MessageType::DData | MessageType::DCmd
        )
    }
}

/// A parsed `spBv1.0/<group>/<type>/<edge_node>[/<device>]` topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic<'a> {
    pub group: &'a str,
    pub kind: MessageType,
    pub edge_node: &'a str,
    pub device: Option<&'a str>,
}

impl<'a> Topic<'a> {
    /// `None` when the topic is not in the Sparkplug namespace at all;
    /// `Some(Err)` when it is, but malformed.
    pub fn parse(topic: &'a str) -> Option<Result<Topic<'a>, Problem>> {
        let rest = topic.strip_prefix(NAMESPACE)?.strip_prefix('/')?;
        let levels: Vec<&str> = rest.split('/').collect();
        if levels.first() == Some(&"STATE") {
            // STATE/<host id> is a host application's own status (and
            // `STATE` is reserved as a group id): not edge data.
            return None;
        }
        let parsed =
            match levels.as_slice() {
                [group, kind, node] => {
                    MessageType::parse(kind)
                        .filter(|k| !k.is_device())
                        .map(|kind| Topic {
                            group,
                            kind,
                            edge_node: node,
                            device: None,
                        })
                }
                [group, kind, node, device] => MessageType::parse(kind)
                    .filter(|k| k.is_device())
                    .map(|kind| Topic {
                        group,
                        kind,
                        edge_node: node,
                        device: Some(device),
                    }),
                // STATE/<host id> is a host's own status: not edge data.
                ["STATE", _] => None,
                _ => None,
            };
        Some(parsed.ok_or(Problem::BadTopic))
    }
}

/// What a message did to an entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    Birth,
    Data,
    Death,
}

/// Decoded metrics of one node or device, by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub group: String,
    pub edge_node: String,
    /// `None` for node-level messages.
    pub device: Option<String>,
    pub kind: UpdateKind,
    /// The payload's timestamp (ms since the epoch), when it has one.
    pub timestamp: Option<u64>,
    /// Metric name → value (`Json::Null` for `is_null` metrics), in
    /// payload order.
    pub metrics: Vec<(String, Json)>,
}

/// An NCMD to publish: asks `edge_node` to send its births again.
#[derive(Clone, Debug, PartialEq)]
pub struct Rebirth {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Why the host asks (for the log).
    pub reason: Problem,
}

/// Something wrong with a message; each kind has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Problem {
    #[error("topic is in the spBv1.0 namespace but not a Sparkplug B topic")]
    BadTopic,
    #[error("payload is not a Sparkplug B protobuf payload")]
    BadPayload,
    #[error("sequence number missing or out of range 0-255")]
    BadSeq,
    #[error("sequence gap: messages from the edge node were lost")]
    SeqGap,
    #[error("metric alias not announced in a birth certificate")]
    UnknownAlias,
    #[error("data from a node or device without a birth certificate")]
    NoBirth,
    #[error("metric without a name or alias, or a birth metric without a name")]
    UnnamedMetric,
    #[error("metric value does not fit its datatype, or the datatype is unsupported")]
    BadValue,
    #[error("NDEATH of an earlier session (its bdSeq is not the current birth's): ignored")]
    StaleDeath,
}

impl Problem {
    pub const ALL: [Problem; 9] = [
        Problem::BadTopic,
        Problem::BadPayload,
        Problem::BadSeq,
        Problem::SeqGap,
        Problem::UnknownAlias,
        Problem::NoBirth,
        Problem::UnnamedMetric,
        Problem::BadValue,
        Problem::StaleDeath,
    ];

    /// The counter label.
    pub fn name(self) -> &'static str {
        match self {
            Problem::BadTopic => "bad_topic",
            Problem::BadPayload => "bad_payload",
            Problem::BadSeq => "bad_seq",
            Problem::SeqGap => "seq_gap",
            Problem::UnknownAlias => "unknown_alias",
            Problem::NoBirth => "no_birth",
            Problem::UnnamedMetric => "unnamed_metric",
            Problem::BadValue => "bad_value",
            Problem::StaleDeath => "stale_death",
        }
    }

    /// Whether the host must ask for a rebirth to get its picture back.
    fn needs_rebirth(self) -> bool {
        matches!(
            self,
            Problem::SeqGap | Problem::UnknownAlias | Problem::NoBirth | Problem::BadSeq
        )
    }
}

/// The outcome of one message.
#[derive(Debug, Default)]
pub struct Handled {
    pub updates: Vec<Update>,
    /// Every problem found (a message may have several).
    pub problems: Vec<Problem>,
    pub rebirth: Option<Rebirth>,
}

/// Name and datatype of each alias, from a birth certificate.
#[derive(Debug, Default)]
struct Birth {
    aliases: HashMap<u64, String>,
    datatypes: HashMap<String, u32>,
}

#[derive(Debug, Default)]
struct NodeState {
    /// The last `seq` seen; `None` before the first NBIRTH.
    seq: Option<u8>,
    birth: Option<Birth>,
    /// The `bdSeq` of the current NBIRTH, when it carried one.
    bd_seq: Option<u64>,
    devices: HashMap<String, Birth>,
    last_rebirth_request: Option<Instant>,
}

/// The host application's picture of every edge node it heard from.
#[derive(Debug, Default)]
pub struct Host {
    nodes: HashMap<(String, String), NodeState>,
}

impl Host {
    pub fn new() -> Host {
        Host::default()
    }

    /// Handles one message received on `topic` (already known to parse
    /// as a Sparkplug topic: see [`Topic::parse`]).
    pub fn handle(&mut self, topic: &Topic<'_>, payload: &[u8], now: Instant) -> Handled {
        let mut out = Handled::default();
        if matches!(
            topic.kind,
            MessageType::NCmd | MessageType::DCmd | MessageType::State
        ) {
            // Commands are for edge nodes; the host only reads their data.
            return out;
        }
        let Ok(decoded) = Payload::decode(payload) else {
            out.problems.push(Problem::BadPayload);
            return out;
        };
        let key = (topic.group.to_string(), topic.edge_node.to_string());
        let node = self.nodes.entry(key).or_default();
        match topic.kind {
            MessageType::NBirth => {
                node.devices.clear();
                node.seq = None;
                node.birth = None;
                node.bd_seq = bd_seq_of(&decoded);
                node.last_rebirth_request = None;
                match seq_of(&decoded) {
                    Some(seq) => node.seq = Some(seq),
                    None => out.problems.push(Problem::BadSeq),
                }
                let (birth, metrics) = read_birth(&decoded, &mut out.problems);
                node.birth = Some(birth);
                out.updates
                    .push(update(topic, UpdateKind::Birth, &decoded, metrics));
            }
            MessageType::NDeath => {
                if let (Some(current), Some(dying)) = (node.bd_seq, bd_seq_of(&decoded)) {
                    if current != dying {
                        out.problems.push(Problem::StaleDeath);
                        return out;
                    }
                }
                // No seq in NDEATH (it carries bdSeq); the node is gone
                // until its next NBIRTH.
                // Its devices die with it (they get no DDEATH of their own).
                node.seq = None;
                node.birth = None;
                node.bd_seq = None;
                let mut devices: Vec<String> = node.devices.drain().map(|(d, _)| d).collect();
                devices.sort();
                out.updates
                    .push(update(topic, UpdateKind::Death, &decoded, Vec::new()));
                for device in devices {
                    let mut death = update(topic, UpdateKind::Death, &decoded, Vec::new());
                    death.device = Some(device);
                    out.updates.push(death);
                }
            }
            kind => {
                check_seq(node, &decoded, &mut out.problems);
                let device = topic.device.unwrap_or_default();
                match kind {
                    MessageType::DBirth => {
                        if node.birth.is_none() {
                            out.problems.push(Problem::NoBirth);
                        }
                        let (birth, metrics) = read_birth(&decoded, &mut out.problems);
                        node.devices.insert(device.to_string(), birth);
                        out.updates
                            .push(update(topic, UpdateKind::Birth, &decoded, metrics));
                    }
                    MessageType::DDeath => {
                        node.devices.remove(device);
                        out.updates
                            .push(update(topic, UpdateKind::Death, &decoded, Vec::new()));
                    }
                    _ => {
                        let birth = if topic.device.is_some() {
                            node.devices.get(device)
                        } else {
                            node.birth.as_ref()
                        };
                        match birth {
                            None => out.problems.push(Problem::NoBirth),
                            Some(birth) => {
                                let (metrics, historical) =
                                    read_data(birth, &decoded, &mut out.problems);
                                out.updates.push(update(
                                    topic,
                                    UpdateKind::Data,
                                    &decoded,
                                    metrics,
                                ));
                                // Each historical metric is its own update
                                // at its own time: older than the entity's
                                // state, the store keeps it as history
                                // without rolling the current value back.
                                for (name, value, at) in historical {
                                    let mut past = update(
                                        topic,
                                        UpdateKind::Data,
                                        &decoded,
                                        vec![(name, value)],
                                    );
                                    past.timestamp = at.or(past.timestamp);
                                    out.updates.push(past);
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(reason) = out.problems.iter().copied().find(|p| p.needs_rebirth()) {
            let due = node
                .last_rebirth_request
                .is_none_or(|at| now.duration_since(at) >= REBIRTH_INTERVAL);
            if due {
                node.last_rebirth_request = Some(now);
                out.rebirth = Some(rebirth_request(topic.group, topic.edge_node, reason));
            }
        }
        out
    }
}

/// The NCMD asking `edge_node` of `group` for a rebirth.
pub fn rebirth_request(group: &str, edge_node: &str, reason: Problem) -> Rebirth {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .ok();
    let payload = Payload {
        timestamp,
        metrics: vec![Metric {
            name: Some(REBIRTH_METRIC.to_string()),
            timestamp,
            datatype: Some(datatype::BOOLEAN),
            value: Some(MetricValue::BooleanValue(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    };
    Rebirth {
        topic: format!("{NAMESPACE}/{group}/NCMD/{edge_node}"),
        payload: payload.encode_to_vec(),
        reason,
    }
}

/// The `bdSeq` metric of a birth or death certificate. Sparkplug types it
/// UInt64; any integer type is read, as edges vary.
fn bd_seq_of(payload: &Payload) -> Option<u64> {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(BD_SEQ_METRIC))
        .and_then(|m| match m.value.as_ref()? {
            MetricValue::LongValue(v) => Some(*v),
            MetricValue::IntValue(v) => Some(u64::from(*v)),
            _ => None,
        })
}

fn seq_of(payload: &Payload) -> Option<u8> {
    payload.seq.and_then(|s| u8::try_from(s).ok())
}

/// Checks and advances the node's sequence number.
fn check_seq(node: &mut NodeState, payload: &Payload, problems: &mut Vec<Problem>) {
    let Some(seq) = seq_of(payload) else {
        problems.push(Problem::BadSeq);
        return;
    };
    if let Some(last) = node.seq {
        if seq != last.wrapping_add(1) {
            problems.push(Problem::SeqGap);
        }
    }
    node.seq = Some(seq);
}

fn update(
    topic: &Topic<'_>,
    kind: UpdateKind,
    payload: &Payload,
    metrics: Vec<(String, Json)>,
) -> Update {
    Update {
        group: topic.group.to_string(),
        edge_node: topic.edge_node.to_string(),
        device: topic.device.map(str::to_string),
        kind,
        timestamp: payload.timestamp,
        metrics,
    }
}

/// The alias table and the values of a birth certificate.
fn read_birth(payload: &Payload, problems: &mut Vec<Problem>) -> (Birth, Vec<(String, Json)>) {
    let mut birth = Birth::default();
    let mut values = Vec::new();
    for metric in &payload.metrics {
        let Some(name) = metric.name.clone() else {
            problems.push(Problem::UnnamedMetric);
            continue;
        };
        if let Some(alias) = metric.alias {
            birth.aliases.insert(alias, name.clone());
        }
        let Some(datatype) = metric.datatype else {
            problems.push(Problem::BadValue);
            continue;
        };
        birth.datatypes.insert(name.clone(), datatype);
        match value_of(metric, datatype) {
            Ok(value) => values.push((name, value)),
            Err(problem) => problems.push(problem),
        }
    }
    (birth, values)
}

/// A historical metric: name, value, its own timestamp.
type Historical = (String, Json, Option<u64>);

/// The values of a data message, names resolved through `birth`: the
/// current ones, and the historical ones (`is_historical`) with their
/// metric timestamps.
fn read_data(
    birth: &Birth,
    payload: &Payload,
    problems: &mut Vec<Problem>,
) -> (Vec<(String, Json)>, Vec<Historical>) {
    let mut historical = Vec::new();
    let mut values = Vec::new();
    for metric in &payload.metrics {
        let name = match (&metric.name, metric.alias) {
            (Some(name), _) => name.clone(),
            (None, Some(alias)) => match birth.aliases.get(&alias) {
                Some(name) => name.clone(),
                None => {
                    problems.push(Problem::UnknownAlias);
                    continue;
                }
            },
            (None, None) => {
                problems.push(Problem::UnnamedMetric);
                continue;
            }
        };
        let Some(datatype) = metric
            .datatype
            .or_else(|| birth.datatypes.get(&name).copied())
        else {
            // A metric the birth did not announce, sent by name without a
            // datatype: nothing says how to read it.
            problems.push(Problem::UnknownAlias);
            continue;
        };
        match value_of(metric, datatype) {
            Ok(value) if metric.is_historical == Some(true) => {
                historical.push((name, value, metric.timestamp))
            }
            Ok(value) => values.push((name, value)),
            Err(problem) => problems.push(problem),
        }
    }
    (values, historical)
}

/// A metric's value as JSON, read by its datatype (signed types are two's
/// complement in the unsigned wire fields).
fn value_of(metric: &Metric, datatype: u32) -> Result<Json, Problem> {
    if metric.is_null == Some(true) {
        return Ok(Json::Null);
    }
    let value = metric.value.as_ref().ok_or(Problem::BadValue)?;
    use datatype::*;
    let json = match (datatype, value) {
        (INT8, MetricValue::IntValue(v)) => Json::from(*v as u8 as i8),
        (INT16, MetricValue::IntValue(v)) => Json::from(*v as u16 as i16),
        (INT32, MetricValue::IntValue(v)) => Json::from(*v as i32),
        (UINT8 | UINT16 | UINT32, MetricValue::IntValue(v)) => Json::from(*v),
        (INT64, MetricValue::LongValue(v)) => Json::from(*v as i64),
        (UINT64 | DATETIME, MetricValue::LongValue(v)) => Json::from(*v),
        (FLOAT, MetricValue::FloatValue(v)) => serde_json::Number::from_f64(f64::from(*v))
            .map(Json::Number)
            .ok_or(Problem::BadValue)?,
        (DOUBLE, MetricValue::DoubleValue(v)) => serde_json::Number::from_f64(*v)
            .map(Json::Number)
            .ok_or(Problem::BadValue)?,
        (BOOLEAN, MetricValue::BooleanValue(v)) => Json::Bool(*v),
        (STRING | TEXT | UUID, MetricValue::StringValue(v)) => Json::String(v.clone()),
        (BYTES, MetricValue::BytesValue(v)) => {
            use base64::Engine;
            Json::String(base64::engine::general_purpose::STANDARD.encode(v))
        }
        _ => return Err(Problem::BadValue),
    };
    Ok(json)
}

#[cfg(test)]
mod tests;
