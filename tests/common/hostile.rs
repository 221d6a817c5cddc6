//! Raw and hostile clients for the resource-limit tests: plain loopback
//! sockets writing MQTT packets (encoded with the rumqttc codec, or byte
//! by byte when they must be wrong) and HTTP requests by hand, plus the
//! node's resident memory read from `/proc`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::QoS;

/// The node's resident set size in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .expect("VmRSS in /proc status")
}

/// Asserts that the node's RSS grew by less than `bound_mib` since
/// `before` (bytes, from [`rss_bytes`]), printing both figures so a run
/// shows what was measured; `load` names the load in the failure.
pub fn assert_rss_growth_below(pid: u32, before: u64, bound_mib: u64, load: &str) {
    const MIB: u64 = 1 << 20;
    let after = rss_bytes(pid);
    eprintln!(
        "RSS {} MiB -> {} MiB under the load",
        before / MIB,
        after / MIB
    );
    assert!(
        after < before + bound_mib * MIB,
        "RSS grew {} MiB for {load}",
        after.saturating_sub(before) / MIB
    );
}

pub fn encode(packet: Packet) -> Vec<u8> {
    let mut buffer = BytesMut::new();
    packet.write(&mut buffer, usize::MAX).expect("encode");
    buffer.to_vec()
}

pub fn connect_frame(client_id: &str, clean_session: bool) -> Vec<u8> {
    let mut connect = Connect::new(client_id);
    connect.clean_session = clean_session;
    connect.keep_alive = 60;
    encode(Packet::Connect(connect))
}

pub fn publish_frame(topic: &str, payload: Vec<u8>, qos: QoS, pkid: u16, retain: bool) -> Vec<u8> {
    let mut publish = Publish::new(topic, qos, payload);
    publish.pkid = pkid;
    publish.retain = retain;
    encode(Packet::Publish(publish))
}

pub fn subscribe_frame(pkid: u16, filters: &[String]) -> Vec<u8> {
    let mut subscribe = Subscribe::new_many(
        filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtMostOnce)),
    );
    subscribe.pkid = pkid;
    encode(Packet::Subscribe(subscribe))
}

/// A socket with reads that give up after `timeout`.
pub fn socket(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Reads exactly `n` bytes, `None` when the peer closed or went quiet.
pub fn read_n(stream: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut out = vec![0; n];
    stream.read_exact(&mut out).ok().map(|_| out)
}

/// Connects with a valid CONNECT and returns the socket and the CONNACK
/// bytes (`[0x20, 2, session_present, code]`), `None` when none came.
pub fn mqtt_connect(
    addr: SocketAddr,
    client_id: &str,
    clean_session: bool,
) -> (TcpStream, Option<Vec<u8>>) {
    let mut stream = socket(addr, Duration::from_secs(5));
    let _ = stream.write_all(&connect_frame(client_id, clean_session));
    let connack = read_n(&mut stream, 4);
    (stream, connack)
}

/// Whether the peer closes the connection within `deadline` (reads return
/// end of file or a reset; whatever data comes first is discarded).
pub fn closed_within(stream: &mut TcpStream, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    while Instant::now() < end {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Reads one MQTT packet: its first byte and its body, `None` when the
/// peer closed or went quiet.
pub fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let first = read_n(stream, 1)?[0];
    let mut len = 0usize;
    for shift in 0..4 {
        let byte = read_n(stream, 1)?[0];
        len |= usize::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            break;
        }
    }
    Some((first, read_n(stream, len)?))
}
