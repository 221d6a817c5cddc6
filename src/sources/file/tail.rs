//! File tail: follows an NDJSON or CSV file as it grows, like `tail -F`.
//!
//! The read position (device, inode, byte offset after the last whole line
//! consumed) is written in the same store transaction as the records those
//! lines produced, so after a crash the node resumes exactly after the last
//! durable line: nothing lost, nothing read twice.
//!
//! Rotation: when the path names a different file (rename-and-create
//! rotation, as logrotate does by default), the old file is read to its end
//! first, then the new one from its start. When the file shrinks below the
//! position (copytruncate), it is read again from the start. A partial last
//! line is left until its newline arrives (or the file is rotated away).
//! On start, a stored position for a different inode means the file was
//! rotated while the node was down: if the rotated file is still in the
//! same folder (`app.log.1`), its unread lines are read first, then the new
//! file from its start.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ingest::{Ingestor, Provenance, SourceCounters};
use crate::pipeline::{Plan, SourceShape};
use super::FileSource;
use crate::product::{PayloadFormat, Product, SourceSettings};
use crate::record::{Origin, Timestamp};
use crate::store::{IngestBatch, SourceOffset};

/// Bytes read per step; one step's whole lines are one write batch.
const READ_CHUNK: usize = 256 * 1024;

/// Where a tail stands: which file, and the offset after the last line
/// whose records are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

impl Position {
    pub fn encode(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&self.dev.to_be_bytes());
        bytes.extend_from_slice(&self.ino.to_be_bytes());
        bytes.extend_from_slice(&self.offset.to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Position> {
        let field = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        if bytes.len() != 24 {
            return None;
        }
        Some(Position {
            dev: field(0)?,
            ino: field(1)?,
            offset: field(2)?,
        })
    }
}

/// One tailed file of one product.
pub struct FileTail {
    pub ingestor: Ingestor,
    pub product: Arc<Product>,
    pub source_id: String,
    pub path: PathBuf,
    pub shape: SourceShape,
    pub poll: Duration,
}

struct OpenFile {
    file: tokio::fs::File,
    position: Position,
    /// Bytes after the last whole line.
    partial: Vec<u8>,
    /// Inside a line longer than the payload limit: drop bytes to its end.
    discarding: bool,
    /// Bytes after `position.offset` dropped while discarding (not in
    /// `partial`), so the next position still counts them.
    skipped: u64,
}

impl FileTail {
    pub fn new(
        ingestor: Ingestor,
        product: Arc<Product>,
        id: crate::product::SourceId,
        source: &FileSource,
        poll: Duration,
    ) -> FileTail {
        let source_id = id.to_string();
        FileTail {
            shape: source.shape(),
            ingestor,
            product,
            source_id,
            path: source.path.clone(),
            poll,
        }
    }

    /// The store key of this tail's position.
    pub fn offset_key(&self) -> String {
        format!("{}/{}", self.product.name, self.source_id)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let counters = self
            .ingestor
            .metrics()
            .source(&self.product.name, &self.source_id);
        let mut open: Option<OpenFile> = None;
        let mut warned_missing = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let Some(current) = open.as_mut() else {
                match self.open().await {
                    Ok(Some(file)) => {
                        info!(path = %self.path.display(), offset = file.position.offset, "tailing");
                        warned_missing = false;
                        open = Some(file);
                    }
                    Ok(None) => {
                        if !warned_missing {
                            info!(path = %self.path.display(), "file to tail does not exist yet; waiting for it");
                            warned_missing = true;
                        }
                        if self.sleep(&shutdown).await {
                            return;
                        }
                    }
                    Err(err) => {
                        warn!(path = %self.path.display(), error = %err, "cannot open file to tail");
                        if self.sleep(&shutdown).await {
                            return;
                        }
                    }
                }
                continue;
            };
            let mut chunk = vec![0u8; READ_CHUNK];
            let read = match current.file.read(&mut chunk).await {
                Ok(n) => n,
                Err(err) => {
                    warn!(path = %self.path.display(), error = %err, "reading tailed file failed; reopening");
                    open = None;
                    if self.sleep(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if read > 0 {
                chunk.truncate(read);
                if let Err(err) = self.consume(current, &chunk, false, &counters).await {
                    warn!(path = %self.path.display(), error = %err, "write failed; resuming from the last durable line");
                    open = None;
                    if self.sleep(&shutdown).await {
                        return;
                    }
                }
                continue;
            }
            // At the end of the file: rotated, truncated, or just no news.
            match tokio::fs::metadata(&self.path).await {
                Ok(meta)
                    if meta.dev() == current.position.dev && meta.ino() == current.position.ino =>
                {
                    if meta.len() < current.position.offset {
                        info!(path = %self.path.display(), "file was truncated; reading it from the start");
                        current.position.offset = 0;
                        current.partial.clear();
                        current.discarding = false;
                        current.skipped = 0;
                        if current
                            .file
                            .seek(std::io::SeekFrom::Start(0))
                            .await
                            .is_err()
                        {
                            open = None;
                        }
                        continue;
                    }
                }
                _ => {
                    // A different file (or none) at the path: the old one is
                    // read to its end; its unterminated last line counts.
                    if !current.partial.is_empty() {
                        if let Err(err) = self.consume(current, b"\n", true, &counters).await {
                            warn!(error = %err, "write failed at rotation");
                            open = None;
                            continue;
                        }
                    }
                    info!(path = %self.path.display(), "file was rotated; following the new one");
                    open = None;
                    continue;
                }
            }
            if self.sleep(&shutdown).await {
                return;
            }
        }
    }

    /// Sleeps one poll interval; true when shutdown came first.
    async fn sleep(&self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(self.poll) => false,
        }
    }

    /// Opens the file at the stored position, or its start. When the
    /// stored position belongs to another file (rotated while the node was
    /// down) that is still in the same folder with unread lines, that file
    /// is finished first.
    async fn open(&self) -> std::io::Result<Option<OpenFile>> {
        let store = self.ingestor.store().clone();
        let key = self.offset_key();
        let stored = tokio::task::spawn_blocking(move || store.source_offset(&key))
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?
            .and_then(|bytes| Position::decode(&bytes));
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(file) => Some(file),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        let current = match &file {
            Some(f) => Some(f.metadata().await?),
            None => None,
        };
        let mut position = None;
        if let Some(stored) = stored {
            let same = current
                .as_ref()
                .is_some_and(|m| m.dev() == stored.dev && m.ino() == stored.ino);
            if same {
                position = Some(stored);
            } else if let Some((rotated, len)) = self.find_rotated(stored).await {
                if stored.offset < len {
                    info!(path = %rotated.display(), "finishing the file rotated while the node was stopped");
                    file = Some(tokio::fs::File::open(&rotated).await?);
                    position = Some(stored);
                }
            }
        }
        let Some(mut file) = file else {
            return Ok(None);
        };
        let position = match position {
            Some(p) => p,
            None => {
                let meta = file.metadata().await?;
                Position {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    offset: 0,
                }
            }
        };
        let len = file.metadata().await?.len();
        let position = if position.offset > len {
            info!(path = %self.path.display(), "file is shorter than the stored position (truncated); reading it from the start");
            Position {
                offset: 0,
                ..position
            }
        } else {
            position
        };
        file.seek(std::io::SeekFrom::Start(position.offset)).await?;
        Ok(Some(OpenFile {
            file,
            position,
            partial: Vec::new(),
            discarding: false,
            skipped: 0,
        }))
    }

    /// The file in the tailed file's folder that has `stored`'s identity
    /// (logrotate renames within the folder), with its length.
    async fn find_rotated(&self, stored: Position) -> Option<(PathBuf, u64)> {
        let folder = self.path.parent()?;
        let mut entries = tokio::fs::read_dir(folder).await.ok()?;
        while let Ok(Some(entry)) = entries.next_entry().await {
            if let Ok(meta) = entry.metadata().await {
                if meta.is_file() && meta.dev() == stored.dev && meta.ino() == stored.ino {
                    return Some((entry.path(), meta.len()));
                }
            }
        }
        None
    }

    /// Turns the whole lines in `partial + bytes` into one durable write
    /// that also moves the position past them.
    async fn consume(
        &self,
        current: &mut OpenFile,
        bytes: &[u8],
        synthetic_newline: bool,
        counters: &Arc<SourceCounters>,
    ) -> Result<(), crate::ingest::WriteError> {
        let max_line = self.ingestor.limits().max_payload_bytes;
        let mut data = std::mem::take(&mut current.partial);
        data.extend_from_slice(bytes);
        let Some(last_newline) = data.iter().rposition(|b| *b == b'\n') else {
            if current.discarding {
                current.skipped += data.len() as u64;
            } else if data.len() > max_line {
                // Too long to ever be a valid line: refuse it now by its
                // first bytes, and drop the rest up to its newline.
                current.skipped += data.len() as u64;
                data.truncate(max_line + 1);
                let unchanged = current.position.offset;
                self.write_lines(current, &[data], unchanged, counters)
                    .await?;
                current.discarding = true;
            } else {
                current.partial = data;
            }
            return Ok(());
        };
        let consumed_bytes = if synthetic_newline {
            last_newline
        } else {
            last_newline + 1
        };
        let rest = data.split_off(last_newline + 1);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut first = true;
        for line in data[..last_newline].split(|b| *b == b'\n') {
            if std::mem::take(&mut first) && current.discarding {
                current.discarding = false;
                continue;
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) || self.is_csv_header(line) {
                continue;
            }
            lines.push(line.to_vec());
        }
        let end = current.position.offset + current.skipped + consumed_bytes as u64;
        self.write_lines(current, &lines, end, counters).await?;
        current.skipped = 0;
        current.partial = rest;
        Ok(())
    }

    fn is_csv_header(&self, line: &[u8]) -> bool {
        self.shape.format == PayloadFormat::Csv
            && std::str::from_utf8(line).is_ok_and(|text| {
                text.split(',')
                    .map(str::trim)
                    .eq(self.shape.columns.iter().map(String::as_str))
            })
    }

    /// Writes the records of `lines` and the new position in one step,
    /// waits until durable, then moves the in-memory position.
    async fn write_lines(
        &self,
        current: &mut OpenFile,
        lines: &[Vec<u8>],
        end_offset: u64,
        counters: &Arc<SourceCounters>,
    ) -> Result<(), crate::ingest::WriteError> {
        let arrival = Timestamp::now();
        let origin = Origin::new(format!("file:{}", self.path.display()));
        // The product as defined now (fields, rules: they follow reloads);
        // the file, its format and mapping stay those the tail started with.
        // A product a reload removed takes nothing: the lines stay unread
        // (the position does not move) until its definition returns.
        let Some(product) = self.ingestor.products().get(&self.product.name).cloned() else {
            return Err(crate::ingest::WriteError::ProductRemoved(
                self.product.name.clone(),
            ));
        };
        let mut batch = IngestBatch::default();
        let mut event_times = Vec::new();
        // Compiled once per read, against the product of this read.
        let plan = Plan::new(&product, &self.shape);
        for line in lines {
            counters.message(line.len());
            let provenance = Provenance {
                source_id: &self.source_id,
                topic: None,
                captures: &[],
                arrival,
                origin: &origin,
                redelivery: false,
            };
            let prepared = self
                .ingestor
                .prepare_planned(&product, &plan, line, &provenance);
            self.ingestor
                .count_rejected(&product, &self.source_id, counters, &prepared.rejected);
            batch.records.extend(prepared.batch.records);
            batch.quarantine.extend(prepared.batch.quarantine);
            event_times.extend(prepared.event_times);
        }
        let position = Position {
            offset: end_offset,
            ..current.position
        };
        batch.source_offset = Some(SourceOffset {
            source: self.offset_key(),
            position: position.encode(),
        });
        let prepared = crate::ingest::Prepared {
            batch,
            rejected: Vec::new(),
            event_times,
        };
        if let Some(write) = self
            .ingestor
            .queue(&product, prepared, false, arrival, counters)
            .await
        {
            crate::ingest::PendingMessage::of(write).wait().await?;
        }
        current.position = position;
        debug!(
            offset = end_offset,
            lines = lines.len(),
            "tail position durable"
        );
        Ok(())
    }
}
