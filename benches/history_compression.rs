//! History compression figures: stored history bytes per raw JSON byte
//! received, with and without per-product dictionaries.
//!
//! ```sh
//! cargo bench --bench history_compression
//! ```
//!
//! A machine_health-like stream (the example product, its MQTT source and
//! mapping, 1 Hz telemetry with random-walk readings, an operator e-mail
//! per shift, RFC 3339 event times) goes through the real pipeline into a
//! real store on a temp dir; dictionaries are trained by the store's own
//! trainer thread when its thresholds are crossed, as on a node. Printed
//! per configuration:
//!
//! - `history/raw`: logical bytes (keys + values) of the product's history
//!   tree and of its instances tree / raw JSON payload bytes received (the
//!   open tail rides in the instance since store format 3; counting the
//!   whole instance, state included, is an upper bound);
//! - `chunks/raw`: sealed chunks only, against the JSON of the events in
//!   them (the steady state: the open tail is not compressed yet);
//! - `dict chunks/raw`: chunks written with a dictionary only;
//! - `disk/raw`: `du` of the whole sled directory after a flush (instances,
//!   audit, sled's own overhead included) / raw JSON bytes.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) a small
//! stream is used, so the code keeps working without taking minutes.

use std::path::Path;

use meshlet::pipeline::{process, Input, Limits, SourceShape};
use meshlet::product::{load_path, LoadContext, Product};
use meshlet::record::{Origin, Timestamp};
use meshlet::store::{Store, StoreConfig};

const PRODUCT: &str = "machine_health";

fn machine_health() -> Product {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let context = LoadContext::with_upstreams(["central".to_string()].into());
    let set = load_path(&root.join("schema/examples/machine_health.yaml"), &context)
        .expect("example product loads");
    let product = set.get(PRODUCT).expect("machine_health defined");
    (**product).clone()
}

/// A small deterministic generator (xorshift), so every run sees the same
/// stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() % 2000) as f64 / 1000.0 - 1.0
    }
}

/// One machine's state between messages.
struct Machine {
    id: String,
    site: &'static str,
    temp: f64,
    vib: f64,
    rpm: i64,
}

const SITES: [&str; 3] = ["berlin", "lyon", "brno"];

fn telemetry(machine: &mut Machine, seq: u64, rng: &mut Rng, start_ms: i64) -> Vec<u8> {
    machine.temp = (machine.temp + rng.unit() * 0.3).clamp(40.0, 95.0);
    machine.vib = (machine.vib + rng.unit() * 0.05).clamp(0.2, 9.0);
    machine.rpm = (machine.rpm + (rng.unit() * 20.0) as i64).clamp(800, 3000);
    let state = if rng.next() % 500 == 0 { "warn" } else { "ok" };
    let shift = seq / 28_800;
    let ms = start_ms + seq as i64 * 1000 + (rng.next() % 40) as i64;
    let ts = Timestamp(ms * 1000).to_rfc3339().expect("valid time");
    format!(
        r#"{{"temp":{:.1},"vib":{{"rms":{:.2}}},"rpm":{},"state":"{state}","hmi":{{"operator":"op{}@example.com"}},"ts":"{ts}"}}"#,
        machine.temp,
        machine.vib,
        machine.rpm,
        (shift + machine.rpm as u64 % 7) % 40
    )
    .into_bytes()
}

#[derive(Default)]
struct Figures {
    raw_json: u64,
    history_bytes: u64,
    chunk_bytes: u64,
    chunk_events: u64,
    dict_chunk_bytes: u64,
    dict_chunk_events: u64,
    disk_bytes: u64,
    dictionaries: usize,
    /// Training time of each dictionary (sampling included), ms.
    train_millis: Vec<u64>,
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            du(&entry.path())
        } else {
            use std::os::unix::fs::MetadataExt;
            meta.blocks() * 512
        };
    }
    total
}

/// The header fields read here (plain MessagePack with named fields).
#[derive(serde::Deserialize)]
struct Header {
    count: u64,
    /// Bytes of the per-field summary between header and body.
    #[serde(default)]
    summary_len: u32,
}

fn header(chunk: &[u8]) -> (usize, Header) {
    let header_len = u32::from_be_bytes(chunk[1..5].try_into().expect("4 bytes")) as usize;
    let header: Header = rmp_serde::from_slice(&chunk[6..5 + header_len]).expect("chunk header");
    (5 + header_len, header)
}

/// Chunk body format 5: `[3][u32 header len][header][summary][5][u32 id]…`.
fn uses_dictionary(chunk: &[u8]) -> bool {
    let (end, header) = header(chunk);
    chunk.get(end + header.summary_len as usize) == Some(&5)
}

/// The count in a chunk header.
fn chunk_count(chunk: &[u8]) -> u64 {
    header(chunk).1.count
}

fn run(machines: usize, messages: u64, chunk_events: usize, dictionary: bool) -> Figures {
    let product = machine_health();
    let shape = SourceShape::from_source(&product.sources[0]);
    let limits = Limits::default();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    let mut config = StoreConfig::new(&path);
    config.history_chunk_events = chunk_events;
    config.dictionary.enabled = dictionary;
    let store = Store::open(config).expect("store opens");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut fleet: Vec<Machine> = (0..machines)
        .map(|i| Machine {
            id: format!("PR-{:04}", i + 1),
            site: SITES[i % SITES.len()],
            temp: 60.0 + (i % 20) as f64,
            vib: 1.0 + (i % 10) as f64 / 10.0,
            rpm: 1200 + (i as i64 % 10) * 100,
        })
        .collect();
    let start_ms = 1_764_000_000_000;
    let mut figures = Figures::default();
    for seq in 0..messages {
        let mut batch = Vec::with_capacity(machines);
        for machine in &mut fleet {
            let payload = telemetry(machine, seq, &mut rng, start_ms);
            figures.raw_json += payload.len() as u64;
            let topic = format!("plant/{}/machine/{}/telemetry", machine.site, machine.id);
            let captures = vec![
                ("site".to_string(), machine.site.to_string()),
                ("machine_id".to_string(), machine.id.clone()),
            ];
            let input = Input {
                payload: &payload,
                captures: &captures,
                arrival: Timestamp((start_ms + seq as i64 * 1000 + 80) * 1000),
                origin: Origin {
                    source: format!("mqtt:{topic}"),
                    actor: Some(format!("{}-ctl", machine.id.to_lowercase())),
                },
            };
            let processed = process(&product, &shape, &input, &limits);
            assert!(processed.invalid.is_empty(), "the stream is valid");
            batch.extend(processed.accepted.into_iter().map(|a| a.record));
        }
        // Arrival as the node stamps it: when the batch was received.
        let arrival =
            Timestamp((start_ms + seq as i64 * 1000 + 85) * 1000 + (seq as i64 * 7919) % 9000);
        store.upsert_at(PRODUCT, &batch, arrival).expect("upsert");
    }
    store.durable_blocking().expect("flush");
    let raw_per_event = figures.raw_json as f64 / (machines as u64 * messages) as f64;
    let history = store
        .raw_db()
        .open_tree(format!("{PRODUCT}/history"))
        .expect("history tree");
    for item in history.iter() {
        let (key, value) = item.expect("history item");
        figures.history_bytes += (key.len() + value.len()) as u64;
        // Key: u16 length, entity, tag (0 = chunk), u64 version.
        let tag = key[key.len() - 9];
        if tag == 0 {
            let count = chunk_count(&value);
            figures.chunk_bytes += (key.len() + value.len()) as u64;
            figures.chunk_events += count;
            if uses_dictionary(&value) {
                figures.dict_chunk_bytes += (key.len() + value.len()) as u64;
                figures.dict_chunk_events += count;
            }
        }
    }
    // The open tail, in the instances (their state counted too).
    let instances = store
        .raw_db()
        .open_tree(format!("{PRODUCT}/instances"))
        .expect("instances tree");
    for item in instances.iter() {
        let (key, value) = item.expect("instance");
        figures.history_bytes += (key.len() + value.len()) as u64;
    }
    drop(instances);
    let dictionaries = store.dictionaries(PRODUCT).expect("dictionaries");
    figures.dictionaries = dictionaries.len();
    figures.train_millis = dictionaries.iter().map(|d| d.train_millis).collect();
    drop(history);
    drop(store);
    figures.disk_bytes = du(&path);
    // Events in chunks stand for their share of the raw JSON.
    figures.chunk_events = (figures.chunk_events as f64 * raw_per_event) as u64;
    figures.dict_chunk_events = (figures.dict_chunk_events as f64 * raw_per_event) as u64;
    figures
}

fn ratio(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.3}", part as f64 / whole as f64)
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (machines, messages) = if full { (50, 2000) } else { (4, 80) };
    println!(
        "history compression: {machines} machines x {messages} messages (machine_health telemetry)"
    );
    println!(
        "| chunk events | dictionary | raw JSON | history/raw | chunks/raw | dict chunks/raw | disk/raw | dictionaries (training ms) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|");
    let chunk_sizes: &[usize] = if full { &[256, 64] } else { &[16] };
    for &chunk in chunk_sizes {
        for dictionary in [false, true] {
            let f = run(machines, messages, chunk, dictionary);
            println!(
                "| {chunk} | {} | {} | {} | {} | {} | {} | {} {:?} |",
                if dictionary { "on" } else { "off" },
                f.raw_json,
                ratio(f.history_bytes, f.raw_json),
                ratio(f.chunk_bytes, f.chunk_events),
                ratio(f.dict_chunk_bytes, f.dict_chunk_events),
                ratio(f.disk_bytes, f.raw_json),
                f.dictionaries,
                f.train_millis,
            );
        }
    }
}
