//! The journal: one line per committed change, fsynced before the change is acknowledged.
//!
//! Each line is `<crc32 as 8 hex digits> <json entry>\n`. A dedicated writer thread
//! takes lines in commit order, writes every line that is waiting in one go and calls
//! `fdatasync` once for all of them (group commit), then publishes how many lines are
//! durable. Callers wait on that number before they answer.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use crm_domain::campaign::Campaign;
use crm_domain::follow_up::FollowUp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;

/// One committed unit: the records it changed (whole, so replay is an upsert) and the
/// events and outbound items it produced.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Entry {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub campaigns: Vec<Campaign>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_ups: Vec<FollowUp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Box<RawValue>>,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("journal entries always serialize");
        let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
        line.extend_from_slice(&json);
        line.push(b'\n');
        line
    }
}

/// Why a journal line could not be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineError {
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed line")]
    Framing,
    #[error("unreadable entry: {0}")]
    Json(#[from] serde_json::Error),
}

pub(crate) fn decode(line: &[u8]) -> Result<Entry, LineError> {
    if line.len() < 10 || line[8] != b' ' {
        return Err(LineError::Framing);
    }
    let crc = std::str::from_utf8(&line[..8])
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or(LineError::Framing)?;
    let json = &line[9..];
    if crc32fast::hash(json) != crc {
        return Err(LineError::Checksum);
    }
    Ok(serde_json::from_slice(json)?)
}

/// The complete lines of a journal file, and whether it ends in a torn (unterminated)
/// line. A torn final line is a write that was never acknowledged: its `fdatasync` had
/// not returned when the process died.
pub(crate) struct JournalText {
    pub lines: Vec<(usize, Vec<u8>)>,
    pub torn_tail_bytes: usize,
}

pub(crate) fn read_lines(bytes: Vec<u8>) -> JournalText {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = bytes[..complete]
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| (index + 1, line.to_vec()))
        .collect();
    JournalText {
        lines,
        torn_tail_bytes: bytes.len() - complete,
    }
}

pub(crate) fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal.{generation:06}.ndjson"))
}

/// How far the journal is durable.
#[derive(Debug, Clone, Default)]
pub(crate) struct Durable {
    /// Lines written and fsynced since the store opened.
    pub lines: u64,
    /// Set once a write or fsync failed; nothing is acknowledged after that.
    pub failed: Option<Arc<str>>,
}

enum Command {
    Append(Vec<u8>),
    /// Switch to a new journal file; everything sent before is synced first.
    Rotate(File),
}

/// The sending side of the writer thread. Lines must be sent in commit order, which the
/// store guarantees by sending while it holds its state lock.
#[derive(Debug)]
pub(crate) struct Journal {
    commands: Sender<Command>,
    durable: watch::Receiver<Durable>,
}

impl Journal {
    pub fn start(file: File) -> io::Result<Self> {
        let (commands, receiver) = channel();
        let (durable_tx, durable) = watch::channel(Durable::default());
        std::thread::Builder::new()
            .name("crm-journal".into())
            .spawn(move || write_loop(file, receiver, durable_tx))?;
        Ok(Self { commands, durable })
    }

    /// Queues a line; returns at once. Fails only when the writer has stopped.
    pub fn append(&self, line: Vec<u8>) -> Result<(), JournalStopped> {
        self.commands
            .send(Command::Append(line))
            .map_err(|_| JournalStopped)
    }

    pub fn rotate(&self, file: File) -> Result<(), JournalStopped> {
        self.commands
            .send(Command::Rotate(file))
            .map_err(|_| JournalStopped)
    }

    /// Waits until the first `lines` lines are durable.
    pub async fn wait_durable(&self, lines: u64) -> Result<(), Arc<str>> {
        let mut durable = self.durable.clone();
        let state = durable
            .wait_for(|d| d.lines >= lines || d.failed.is_some())
            .await
            .map_err(|_| Arc::<str>::from("journal writer stopped"))?;
        match &state.failed {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("journal writer stopped")]
pub(crate) struct JournalStopped;

fn write_loop(mut file: File, commands: Receiver<Command>, durable: watch::Sender<Durable>) {
    let mut written = 0u64;
    let mut batch = Vec::new();
    // Bytes of the current file known to be on disk; a failed batch is cut back to it.
    let mut synced = file.metadata().map_or(0, |metadata| metadata.len());
    while let Ok(first) = commands.recv() {
        let mut pending = vec![first];
        pending.extend(commands.try_iter());
        let mut result = Ok(());
        for command in pending {
            match command {
                Command::Append(line) => {
                    batch.extend_from_slice(&line);
                    written += 1;
                }
                Command::Rotate(next) => {
                    result = result.and_then(|()| flush(&mut file, &mut batch, &mut synced));
                    file = next;
                    synced = 0;
                }
            }
        }
        result = result.and_then(|()| flush(&mut file, &mut batch, &mut synced));
        match result {
            Ok(()) => {
                durable.send_modify(|d| d.lines = written);
            }
            Err(error) => {
                tracing::error!(%error, "journal write failed; the file store stops acknowledging writes");
                durable.send_modify(|d| d.failed = Some(Arc::from(error.to_string())));
                // Drain and drop everything else: nothing more can be acknowledged.
                for _ in commands.iter() {}
                return;
            }
        }
    }
}

/// Writes and syncs `batch`. On failure the file is cut back to what was synced before,
/// so that writes the callers are told failed do not come back after a restart.
fn flush(file: &mut File, batch: &mut Vec<u8>, synced: &mut u64) -> io::Result<()> {
    let written = file.write_all(batch).and_then(|()| file.sync_data());
    match written {
        Ok(()) => {
            *synced += batch.len() as u64;
            batch.clear();
            Ok(())
        }
        Err(error) => {
            if let Err(cut) = file.set_len(*synced).and_then(|()| file.sync_data()) {
                tracing::error!(%cut, "cannot cut the journal back after a failed write");
            }
            Err(error)
        }
    }
}
