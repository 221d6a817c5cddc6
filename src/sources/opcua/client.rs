//! The task of one `opcua` source: a session to the server, one
//! subscription with a monitored item per mapped node, records written
//! as notifications arrive.
//!
//! Reconnecting is the client crate's session event loop: on a lost
//! connection it retries with exponential backoff (0.5 s doubling to
//! 30 s, without limit), reactivates the session or creates a new one, and
//! transfers or recreates the subscription and its monitored items. A
//! recreated monitored item reports its node's current value first, so
//! values that changed while the server was away are read on resubscribe;
//! the intermediate values are not (OPC UA keeps no history for a
//! subscription that is gone).
//!
//! Notifications are handed from the crate's callback (synchronous, on
//! the event loop) to this task through [`Pending`]: one record per entity
//! per publishing cycle, queued up to [`QUEUE_RECORDS`]; beyond that a
//! cycle's values are merged into the entity's newest queued record (the
//! newest value of a field wins; `reason="coalesced"` counts the merges),
//! so a slow store bounds memory instead of queueing without end. Each
//! record is written through the ordinary pipeline and the next waits
//! until it is durable. OPC UA has no acknowledgement: what is lost on a
//! crash is what was queued and not yet durable, and after a restart the
//! new subscription reads every node's current value again.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use opcua::client::{
    ClientBuilder, IdentityToken, MonitoredItemMap, OnSubscriptionNotificationCore,
    SessionPollResult,
};
use opcua::types::{
    DataChangeNotification, DataValue, EndpointDescription, ExtensionObject, MessageSecurityMode,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, NotificationMessage,
    ReadValueId, StatusCode, TimestampsToReturn, UserTokenPolicy, Variant,
};
use serde_json::{Map, Number, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::spec::OpcuaSource;
use crate::ingest::{Ingestor, SourceCounters};
use crate::product::{Product, SourceId, SourceSettings};
use crate::record::{Origin, Timestamp};

/// Records queued between the crate's callback and the writer before
/// cycles are merged into the newest queued record of their entity.
const QUEUE_RECORDS: usize = 1024;
/// Bound on a clean disconnect at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on each service call (create subscription, monitored items).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff: from half a second, doubling, to 30 seconds.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One monitored node: which entity and field its values go to. The
/// client handle of node `i` is `i + 1` (0 would let the crate pick).
#[derive(Clone, Debug)]
struct Slot {
    entity: usize,
    field: String,
    node: String,
}

/// One entity's changes in one publishing cycle.
struct Change {
    entity: usize,
    fields: Map<String, Value>,
}

/// The hand-over from the crate's callback to the writer.
#[derive(Default)]
struct Pending {
    queue: Mutex<VecDeque<Change>>,
    ready: Notify,
}

impl Pending {
    fn push(&self, change: Change, counters: &SourceCounters) {
        let mut queue = lock(&self.queue);
        if queue.len() >= QUEUE_RECORDS {
            if let Some(newest) = queue.iter_mut().rev().find(|c| c.entity == change.entity) {
                newest.fields.extend(change.fields);
                counters.read_error("coalesced");
                return;
            }
        }
        // Past the bound only for an entity with nothing queued: at most
        // one record per entity more.
        queue.push_back(change);
        drop(queue);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Change> {
        lock(&self.queue).pop_front()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The subscription's callback: a publishing cycle's data changes,
/// grouped by entity.
struct Notifications {
    slots: Arc<Vec<Slot>>,
    pending: Arc<Pending>,
    counters: Arc<SourceCounters>,
    entities: usize,
}

impl OnSubscriptionNotificationCore for Notifications {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let mut changes: Vec<Map<String, Value>> = vec![Map::new(); self.entities];
        for object in notification.notification_data.into_iter().flatten() {
            let Some(data) = object.into_inner_as::<DataChangeNotification>() else {
                // Status changes and events: nothing to record.
                continue;
            };
            for item in data.monitored_items.into_iter().flatten() {
                let Some(slot) = (item.client_handle as usize)
                    .checked_sub(1)
                    .and_then(|i| self.slots.get(i))
                else {
                    debug!(
                        handle = item.client_handle,
                        "notification for an unknown item"
                    );
                    continue;
                };
                match json_value(&item.value) {
                    Ok(value) => {
                        changes[slot.entity].insert(slot.field.clone(), value);
                    }
                    Err(reason) => {
                        self.counters.read_error(reason);
                        debug!(node = %slot.node, field = %slot.field, reason, status = ?item.value.status, "opcua value left out");
                    }
                }
            }
        }
        for (entity, fields) in changes.into_iter().enumerate() {
            if !fields.is_empty() {
                self.pending.push(Change { entity, fields }, &self.counters);
            }
        }
    }
}

/// A data value as JSON, or why it is left out: a bad status
/// (`bad_status`: the server could not read the node) or a type with no
/// field equivalent (`unsupported_type`). Uncertain values are kept; the
/// product's quality rules judge them like any other.
fn json_value(value: &DataValue) -> Result<Value, &'static str> {
    if value.status.is_some_and(|s| s.is_bad()) {
        return Err("bad_status");
    }
    let Some(variant) = &value.value else {
        return Err("bad_status");
    };
    let number = |n: f64| {
        Number::from_f64(n)
            .map(Value::Number)
            .ok_or("unsupported_type")
    };
    Ok(match variant {
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(n) => Value::from(*n),
        Variant::Byte(n) => Value::from(*n),
        Variant::Int16(n) => Value::from(*n),
        Variant::UInt16(n) => Value::from(*n),
        Variant::Int32(n) => Value::from(*n),
        Variant::UInt32(n) => Value::from(*n),
        Variant::Int64(n) => Value::from(*n),
        Variant::UInt64(n) => Value::from(*n),
        Variant::Float(n) => number(f64::from(*n))?,
        Variant::Double(n) => number(*n)?,
        Variant::String(s) => match s.value() {
            Some(s) => Value::String(s.clone()),
            None => Value::Null,
        },
        Variant::LocalizedText(t) => match t.text.value() {
            Some(s) => Value::String(s.clone()),
            None => Value::Null,
        },
        Variant::DateTime(t) => Value::String(t.to_rfc3339()),
        Variant::Empty => Value::Null,
        _ => return Err("unsupported_type"),
    })
}

pub(super) struct Subscriber {
    ingestor: Ingestor,
    product: Arc<Product>,
    id: SourceId,
    source: OpcuaSource,
    identity: IdentityToken,
    pki_dir: std::path::PathBuf,
}

impl Subscriber {
    pub(super) fn new(
        ingestor: Ingestor,
        product: Arc<Product>,
        id: SourceId,
        source: &OpcuaSource,
        password: Option<String>,
        pki_dir: std::path::PathBuf,
    ) -> Subscriber {
        let identity = match (&source.user, password) {
            (Some(user), Some(password)) => IdentityToken::new_user_name(&user.name, password),
            _ => IdentityToken::Anonymous,
        };
        Subscriber {
            ingestor,
            product,
            id,
            source: source.clone(),
            identity,
            pki_dir,
        }
    }

    pub(super) async fn run(self, shutdown: CancellationToken) {
        let source_id = self.id.to_string();
        let counters = self
            .ingestor
            .metrics()
            .source(&self.product.name, &source_id);
        // The server is the one device this source reaches; down until
        // a session is active.
        counters.polled_devices(1);
        counters.devices_down(1);
        let slots: Arc<Vec<Slot>> = Arc::new(
            self.source
                .entities
                .iter()
                .enumerate()
                .flat_map(|(entity, e)| {
                    e.nodes.iter().map(move |(field, node)| Slot {
                        entity,
                        field: field.clone(),
                        node: node.clone(),
                    })
                })
                .collect(),
        );
        let pending = Arc::new(Pending::default());
        info!(endpoint = %self.source.endpoint, nodes = slots.len(), interval = ?self.source.publishing_interval, "subscribing to opcua nodes");
        tokio::join!(
            self.sessions(&slots, &pending, &counters, &shutdown),
            self.write(&pending, &shutdown),
        );
        debug!(source = %self.id, "opcua subscriber stopped");
    }

    /// Session after session until `shutdown`: connect (retried with
    /// backoff), subscribe, run until the connection is lost. A new
    /// session subscribes afresh, so every node's current value is
    /// reported again.
    async fn sessions(
        &self,
        slots: &Arc<Vec<Slot>>,
        pending: &Arc<Pending>,
        counters: &Arc<SourceCounters>,
        shutdown: &CancellationToken,
    ) {
        let mut client = match ClientBuilder::new()
            .application_name("meshlet")
            .application_uri(format!(
                "urn:meshlet:{}:{}",
                self.product.name,
                self.id.to_string().replace(':', "-")
            ))
            .product_uri("urn:meshlet")
            .pki_dir(&self.pki_dir)
            .create_sample_keypair(true)
            .trust_server_certs(false)
            // Reconnects are this loop's: a new session and subscription
            // each time (servers that lost their state, like a restarted
            // PLC, refuse transfers).
            .session_retry_limit(0)
            .recreate_subscriptions(false)
            .request_timeout(REQUEST_TIMEOUT)
            .client()
        {
            Ok(client) => client,
            Err(errors) => {
                warn!(errors = ?errors, "opcua client not started: invalid client configuration");
                return;
            }
        };
        let endpoint: EndpointDescription = (
            self.source.endpoint.as_str(),
            "http://opcfoundation.org/UA/SecurityPolicy#None",
            MessageSecurityMode::None,
            UserTokenPolicy::anonymous(),
        )
            .into();
        let mut backoff = INITIAL_BACKOFF;
        let mut logged = false;
        loop {
            // The server's endpoints first (the session's user token
            // policy comes from there), then the session.
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = client.connect_to_matching_endpoint(endpoint.clone(), self.identity.clone()) => c,
            };
            let (session, event_loop) = match connected {
                Ok(pair) => pair,
                Err(err) => {
                    counters.read_error("connect");
                    if !logged {
                        warn!(endpoint = %self.source.endpoint, error = %err, "cannot reach the opcua server; retrying with backoff");
                        logged = true;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let events = EventLoop {
                session: session.clone(),
                slots: slots.clone(),
                pending: pending.clone(),
                counters: counters.clone(),
                entities: self.source.entities.len(),
                interval: self.source.publishing_interval,
                endpoint: self.source.endpoint.clone(),
            };
            let active = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.disconnect()).await;
                    return;
                }
                active = events.run(event_loop) => active,
            };
            if active {
                backoff = INITIAL_BACKOFF;
                logged = false;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Writes queued records, one at a time, each durable before the next.
    async fn write(&self, pending: &Pending, shutdown: &CancellationToken) {
        let source_id = self.id.to_string();
        let origin = Origin::new(format!("opcua:{}", self.source.endpoint));
        let shape = self.source.shape();
        loop {
            let Some(change) = pending.pop() else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = pending.ready.notified() => continue,
                }
            };
            let Some(entity) = self.source.entities.get(change.entity) else {
                continue;
            };
            let mut record = change.fields;
            record.insert(self.product.key.clone(), Value::String(entity.key.clone()));
            if let (Some(field), Some(time)) = (&self.source.time_field, Timestamp::now().to_rfc3339()) {
                record.insert(field.clone(), Value::String(time));
            }
            let payload = match serde_json::to_vec(&Value::Object(record)) {
                Ok(p) => p,
                Err(err) => {
                    warn!(error = %err, "cannot encode an opcua record");
                    continue;
                }
            };
            match self
                .ingestor
                .submit_polled(&self.product, &source_id, &shape, &payload, origin.clone())
                .await
            {
                Ok(written) => {
                    if let Err(err) = written.wait().await {
                        warn!(entity = %entity.key, error = %err, "opcua record not written");
                    }
                }
                // Counted and logged (rate-limited) by the ingestor.
                Err(refusal) => debug!(entity = %entity.key, ?refusal, "opcua record refused"),
            }
        }
    }
}

/// Drives the session: the crate's event loop, whose events are counted
/// here, and the subscription, made once the first session is active.
struct EventLoop {
    session: Arc<opcua::client::Session>,
    slots: Arc<Vec<Slot>>,
    pending: Arc<Pending>,
    counters: Arc<SourceCounters>,
    entities: usize,
    interval: Duration,
    endpoint: String,
}

impl EventLoop {
    /// Runs one session until its connection is lost or it ends;
    /// whether it was ever active.
    async fn run<T>(self, event_loop: opcua::client::SessionEventLoop<T>) -> bool
    where
        T: opcua::client::transport::Connector + Send + Sync + 'static,
    {
        let stream = event_loop.enter();
        futures_util::pin_mut!(stream);
        let mut subscribed = false;
        let mut active = false;
        let mut subscribing: Option<
            futures_util::future::BoxFuture<'static, Result<(), StatusCode>>,
        > = None;
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    None => break,
                    Some(Err(status)) => {
                        // The session never became active (refused login,
                        // the server went away while connecting).
                        self.counters.read_error("connect");
                        warn!(endpoint = %self.endpoint, %status, "opcua session not opened; retrying with backoff");
                        break;
                    }
                    Some(Ok(SessionPollResult::Reconnected(mode))) => {
                        active = true;
                        self.counters.devices_down(0);
                        info!(endpoint = %self.endpoint, ?mode, "opcua session active");
                        if !subscribed && subscribing.is_none() {
                            subscribing = Some(Box::pin(subscribe(
                                self.session.clone(),
                                self.slots.clone(),
                                Notifications {
                                    slots: self.slots.clone(),
                                    pending: self.pending.clone(),
                                    counters: self.counters.clone(),
                                    entities: self.entities,
                                },
                                self.counters.clone(),
                                self.interval,
                            )));
                        }
                    }
                    Some(Ok(SessionPollResult::ConnectionLost(status))) => {
                        self.counters.read_error("connection_lost");
                        self.counters.devices_down(1);
                        warn!(endpoint = %self.endpoint, %status, "opcua connection lost; reconnecting with backoff");
                        break;
                    }
                    Some(Ok(SessionPollResult::ReconnectFailed(status))) => {
                        self.counters.read_error("connect");
                        debug!(endpoint = %self.endpoint, %status, "opcua reconnect failed");
                    }
                    Some(Ok(_)) => {}
                },
                done = async { subscribing.as_mut().expect("guarded").await }, if subscribing.is_some() => {
                    subscribing = None;
                    match done {
                        Ok(()) => subscribed = true,
                        // A new session tries again.
                        Err(status) => {
                            warn!(endpoint = %self.endpoint, %status, "opcua subscription not created; retrying on a new session");
                            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.session.disconnect()).await;
                            break;
                        }
                    }
                }
            }
        }
        if !active {
            self.counters.devices_down(1);
        }
        active
    }
}

/// Creates the subscription and its monitored items; a node the server
/// refuses (an unknown node id, a node that is not a variable) is counted
/// (`reason="bad_node"`) and logged with its status, and the others are
/// monitored.
async fn subscribe(
    session: Arc<opcua::client::Session>,
    slots: Arc<Vec<Slot>>,
    callback: Notifications,
    counters: Arc<SourceCounters>,
    interval: Duration,
) -> Result<(), StatusCode> {
    // Keep-alive every 10 intervals, lifetime 3 keep-alives (the
    // standard's ratio); 0: no limit on notifications per publish.
    let id = session
        .create_subscription(interval, 30, 10, 0, 0, true, callback)
        .await
        .map_err(|e| e.status())?;
    let mut items = Vec::with_capacity(slots.len());
    let mut handles = Vec::with_capacity(slots.len());
    for (index, slot) in slots.iter().enumerate() {
        let Ok(node_id) = NodeId::from_str(&slot.node) else {
            // Checked by the definition's parse; counted if it slips by.
            counters.read_error("bad_node");
            warn!(node = %slot.node, field = %slot.field, "invalid opcua node id");
            continue;
        };
        handles.push(index);
        items.push(MonitoredItemCreateRequest {
            item_to_monitor: ReadValueId::from(node_id),
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                client_handle: index as u32 + 1,
                sampling_interval: interval.as_secs_f64() * 1000.0,
                filter: ExtensionObject::null(),
                queue_size: 1,
                discard_oldest: true,
            },
        });
    }
    let results = session
        .create_monitored_items(id, TimestampsToReturn::Both, items)
        .await
        .map_err(|e| e.status())?;
    let mut refused = 0;
    for (index, created) in handles.iter().zip(&results) {
        let status = created.result.status_code;
        if status.is_bad() {
            refused += 1;
            counters.read_error("bad_node");
            let slot = &slots[*index];
            warn!(node = %slot.node, field = %slot.field, %status, "the opcua server refused to monitor this node; its field stays empty");
        }
    }
    info!(
        monitored = results.len() - refused,
        refused, "opcua subscription created"
    );
    Ok(())
}
