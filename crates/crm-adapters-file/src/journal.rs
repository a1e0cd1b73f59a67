//! The journal: one framed line per committed change, fsynced before the change is
//! acknowledged.
//!
//! A journal file is `journal.<generation>.ndjson`. Its first line is a header naming the
//! format and the generation; every other line is one record carrying its place in a
//! sequence that runs on across files, so a missing line or file shows as a gap. A file
//! is created whole (header written and synced under a temporary name, then renamed), so
//! an empty journal file is always damage, never a crash.
//!
//! A writer thread takes lines in commit order, writes every line that is waiting in one
//! go and calls `fdatasync` once for all of them (group commit), then publishes how far
//! the sequence is durable. When a write fails (a full disk), the file is cut back to what
//! was synced, that batch and everything queued behind it fail, and the writer refuses
//! lines until the store has rolled its pending changes back (`reset`); the next batch
//! then tries the disk again, so the store recovers by itself once there is room.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::frame;
use crate::records::{FORMAT, HeaderLine, JournalHeader};

pub(crate) fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal.{generation:06}.ndjson"))
}

/// The generation a journal file name stands for, if it is one.
pub(crate) fn journal_generation(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("journal.")?.strip_suffix(".ndjson")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The journal generations present in `dir`, oldest first.
pub(crate) fn journal_generations(dir: &Path) -> io::Result<Vec<u64>> {
    let mut generations = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        generations.extend(name.to_str().and_then(journal_generation));
    }
    generations.sort_unstable();
    Ok(generations)
}

/// Creates the journal file of `generation` whole, or not at all: the header is written
/// and synced under a temporary name, which is then renamed into place and the rename
/// made durable.
pub(crate) fn create_journal(dir: &Path, generation: u64) -> io::Result<File> {
    let path = journal_path(dir, generation);
    let temporary = path.with_extension("ndjson.tmp");
    let header = frame::encode(&HeaderLine {
        journal: JournalHeader {
            format: FORMAT,
            generation,
        },
    });
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&temporary)?;
    file.write_all(&header)?;
    file.sync_all()?;
    drop(file);
    if path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", path.display()),
        ));
    }
    fs::rename(&temporary, &path)?;
    sync_dir(dir)?;
    OpenOptions::new().append(true).open(&path)
}

/// Makes renames, new files and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How far the journal is durable, as the writer publishes it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// Rolled forward by every `reset`; a line belongs to the epoch it was sent in.
    pub epoch: u64,
    /// The last sequence number on disk.
    pub durable: u64,
    /// Set when a write failed: nothing more is taken until the next `reset`.
    pub broken: Option<Arc<str>>,
    /// `epoch_ends[e]`: the last durable sequence number of ended epoch `e`.
    pub epoch_ends: Vec<u64>,
    /// Whether the last write or sync succeeded.
    pub healthy: bool,
}

impl Status {
    /// The fate of line `seq` sent in `epoch`, once it is decided.
    pub fn outcome(&self, seq: u64, epoch: u64) -> Option<Result<(), Arc<str>>> {
        if epoch < self.epoch {
            let end = self.epoch_ends.get(epoch as usize).copied().unwrap_or(0);
            return Some(if seq <= end {
                Ok(())
            } else {
                Err(Arc::from("journal write failed"))
            });
        }
        if self.durable >= seq {
            return Some(Ok(()));
        }
        self.broken.clone().map(Err)
    }
}

/// The parts of `Status` the store looks at on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub epoch: u64,
    pub durable: u64,
    pub broken: bool,
    pub healthy: bool,
}

enum Command {
    Append {
        seq: u64,
        line: Vec<u8>,
    },
    /// Switch to a new journal file; everything sent before goes to the old one.
    Rotate {
        generation: u64,
        done: Sender<io::Result<()>>,
    },
    /// The store rolled back everything after `Status::durable`: take lines again.
    Reset {
        epoch: u64,
    },
}

/// The sending side of the writer thread. Lines must be sent in sequence order, which the
/// store guarantees by sending while it holds its lock.
#[derive(Debug)]
pub(crate) struct Journal {
    commands: Option<Sender<Command>>,
    status: watch::Receiver<Status>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("journal writer stopped")]
pub(crate) struct JournalStopped;

impl Journal {
    /// Starts the writer on `file` (an open journal, positioned at its end), with
    /// sequence numbers up to `durable` already on disk.
    pub fn start(dir: PathBuf, file: File, durable: u64) -> io::Result<Self> {
        let (commands, receiver) = channel();
        let (status_tx, status) = watch::channel(Status {
            durable,
            healthy: true,
            ..Status::default()
        });
        let synced = file.metadata()?.len();
        let writer = Writer {
            dir,
            file,
            synced,
            poisoned: false,
            status: status_tx,
        };
        let thread = std::thread::Builder::new()
            .name("crm-journal".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Self {
            commands: Some(commands),
            status,
            thread: Some(thread),
        })
    }

    fn send(&self, command: Command) -> Result<(), JournalStopped> {
        self.commands
            .as_ref()
            .ok_or(JournalStopped)?
            .send(command)
            .map_err(|_| JournalStopped)
    }

    /// Queues a line; returns at once.
    pub fn append(&self, seq: u64, line: Vec<u8>) -> Result<(), JournalStopped> {
        self.send(Command::Append { seq, line })
    }

    /// Asks for a switch to `generation`; the answer arrives on the returned channel.
    pub fn rotate(&self, generation: u64) -> Result<Receiver<io::Result<()>>, JournalStopped> {
        let (done, answer) = channel();
        self.send(Command::Rotate { generation, done })?;
        Ok(answer)
    }

    pub fn reset(&self, epoch: u64) -> Result<(), JournalStopped> {
        self.send(Command::Reset { epoch })
    }

    /// A receiver that sees every change of the writer's status.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The writer's progress, read without copying the whole status.
    pub fn progress(&self) -> Progress {
        let status = self.status.borrow();
        Progress {
            epoch: status.epoch,
            durable: status.durable,
            broken: status.broken.is_some(),
            healthy: status.healthy,
        }
    }

    /// Waits until line `seq` of `epoch` is durable, or known lost.
    pub async fn wait(&self, seq: u64, epoch: u64) -> Result<(), Arc<str>> {
        let mut status = self.status.clone();
        let decided = status
            .wait_for(|status| status.outcome(seq, epoch).is_some())
            .await
            .map_err(|_| Arc::<str>::from("journal writer stopped"))?;
        decided
            .outcome(seq, epoch)
            .unwrap_or_else(|| Err(Arc::from("journal writer stopped")))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what it holds and stop.
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    /// Bytes of the current file known to be on disk; a failed batch is cut back to it.
    synced: u64,
    /// The file could not be cut back after a failed write: it may end in a partial
    /// line, so nothing more may be appended to it.
    poisoned: bool,
    status: watch::Sender<Status>,
}

impl Writer {
    fn run(mut self, commands: Receiver<Command>) {
        let mut batch = Vec::new();
        let mut last = None;
        while let Ok(first) = commands.recv() {
            for command in std::iter::once(first).chain(commands.try_iter()) {
                match command {
                    Command::Append { seq, line } => {
                        if self.status.borrow().broken.is_none() {
                            batch.extend_from_slice(&line);
                            last = Some(seq);
                        }
                    }
                    Command::Rotate { generation, done } => {
                        self.flush(&mut batch, &mut last);
                        let _ = done.send(self.rotate(generation));
                    }
                    Command::Reset { epoch } => self.reset(epoch),
                }
            }
            self.flush(&mut batch, &mut last);
        }
    }

    /// Writes and syncs the batch, then publishes the outcome.
    fn flush(&mut self, batch: &mut Vec<u8>, last: &mut Option<u64>) {
        let Some(seq) = last.take() else { return };
        let written = self
            .file
            .write_all(batch)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.synced += batch.len() as u64;
                self.status.send_modify(|status| {
                    status.durable = seq;
                    status.healthy = true;
                });
            }
            Err(error) => {
                tracing::error!(%error, "journal write failed; the changes of this batch are refused");
                if let Err(cut) = self
                    .file
                    .set_len(self.synced)
                    .and_then(|()| self.file.sync_data())
                {
                    tracing::error!(%cut, "cannot cut the journal back after a failed write; the store stays unavailable until it is restarted");
                    self.poisoned = true;
                }
                self.status.send_modify(|status| {
                    status.broken = Some(Arc::from(error.to_string()));
                    status.healthy = false;
                });
            }
        }
        batch.clear();
    }

    fn rotate(&mut self, generation: u64) -> io::Result<()> {
        if let Some(reason) = self.status.borrow().broken.clone() {
            return Err(io::Error::other(reason.to_string()));
        }
        let file = create_journal(&self.dir, generation)?;
        self.synced = file.metadata()?.len();
        self.file = file;
        Ok(())
    }

    fn reset(&mut self, epoch: u64) {
        let poisoned = self.poisoned;
        self.status.send_modify(|status| {
            let end = status.durable;
            status.epoch_ends.resize(status.epoch as usize, end);
            status.epoch_ends.push(end);
            status.epoch = epoch;
            if !poisoned {
                status.broken = None;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_decided_by_its_own_epoch() {
        let status = Status {
            epoch: 1,
            durable: 12,
            broken: None,
            epoch_ends: vec![7],
            healthy: true,
        };
        assert!(matches!(status.outcome(7, 0), Some(Ok(()))));
        assert!(matches!(status.outcome(8, 0), Some(Err(_))));
        assert!(matches!(status.outcome(12, 1), Some(Ok(()))));
        assert!(status.outcome(13, 1).is_none());
    }

    #[test]
    fn journal_names_carry_their_generation() {
        assert_eq!(journal_generation("journal.000042.ndjson"), Some(42));
        assert_eq!(journal_generation("journal.000042.ndjson.tmp"), None);
        assert_eq!(journal_generation("journal..ndjson"), None);
        assert_eq!(journal_generation("journal.-1.ndjson"), None);
    }
}
