//! The compactor: a thread of the store's own that folds the journal into the snapshots
//! in the background.
//!
//! It belongs to the store, not to whoever happened to write last, so it outlives any
//! request or runtime and stops with the store. Every way out of a compaction clears its
//! state (`Running`'s drop), and anyone waiting for it is told when it ends, so a
//! shutdown that waits for the final compaction can bound the wait.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, Weak};
use std::thread::{JoinHandle, ThreadId};

use tokio::sync::watch;

use crate::compaction::{self, Snapshot};
use crate::store::{FileStore, Inner};

/// Handle to the compactor thread.
#[derive(Debug)]
pub(crate) struct Compactor {
    requests: Mutex<Option<Sender<Ask>>>,
    /// How many rounds have started and finished, for waiters.
    rounds: watch::Receiver<Rounds>,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: Option<ThreadId>,
}

impl Compactor {
    pub fn start(store: Weak<Inner>) -> Self {
        let (requests, receiver) = channel();
        let (rounds_tx, rounds) = watch::channel(Rounds::default());
        let thread = std::thread::Builder::new()
            .name("crm-compactor".into())
            .spawn(move || run(store, receiver, rounds_tx))
            .map_err(|error| tracing::error!(%error, "cannot start the compactor; the journal will keep growing"))
            .ok();
        Self {
            thread_id: thread.as_ref().map(|t| t.thread().id()),
            requests: Mutex::new(Some(requests)),
            rounds,
            thread: Mutex::new(thread),
        }
    }

    /// Asks for a compaction if one is still due when the round would start; returns at
    /// once. Writers that see the journal past its size before the round marks itself
    /// under way each ask, and those late asks must not fold the store again.
    pub fn request(&self) {
        self.send(Ask::IfDue);
    }

    fn send(&self, ask: Ask) {
        if let Some(requests) = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = requests.send(ask);
        }
    }

    /// Asks for a compaction and resolves once a round that started after this call has
    /// finished (or the compactor is gone).
    pub fn request_and_watch(&self) -> impl Future<Output = ()> + use<> {
        let mut rounds = self.rounds.clone();
        // A round running now may have taken its snapshot before this call.
        let started = rounds.borrow_and_update().started;
        self.send(Ask::Now);
        async move {
            let _ = rounds.wait_for(|rounds| rounds.finished > started).await;
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        drop(
            self.requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        // The last handle to the store may be dropped by the compactor thread itself.
        if Some(std::thread::current().id()) != self.thread_id
            && let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            let _ = thread.join();
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// A round if the journal is still past its size (a writer's request).
    IfDue,
    /// A round whatever the journal holds (retention, the final compaction).
    Now,
}

#[derive(Debug, Clone, Copy, Default)]
struct Rounds {
    started: u64,
    finished: u64,
}

fn run(store: Weak<Inner>, requests: Receiver<Ask>, rounds: watch::Sender<Rounds>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "the compactor cannot start; the journal will keep growing");
            return;
        }
    };
    while let Ok(first) = requests.recv() {
        // Requests that piled up while a round ran are served by the next round.
        let mut ask = first;
        while let Ok(next) = requests.try_recv() {
            if next == Ask::Now {
                ask = Ask::Now;
            }
        }
        let Some(inner) = store.upgrade() else { break };
        let store = FileStore { inner };
        if ask == Ask::IfDue && !store.compaction_due(&store.lock()) {
            continue;
        }
        rounds.send_modify(|rounds| rounds.started += 1);
        if let Err(error) = runtime.block_on(compact(&store)) {
            tracing::error!(%error, "file store compaction failed; the journal keeps everything");
        }
        drop(store);
        rounds.send_modify(|rounds| rounds.finished = rounds.started);
    }
}

/// Clears the compaction state however the round ends.
struct Running<'a> {
    store: &'a FileStore,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut shared = self.store.lock();
        shared.snapshot.active = false;
        shared.snapshot.at = None;
        shared.snapshot.image = None;
    }
}

/// One round: rotate the journal, wait until everything before the rotation is
/// durable, take the image as of that point, write and commit it.
async fn compact(store: &FileStore) -> std::io::Result<()> {
    let inner = &store.inner;
    let (answer, boundary, folded_generation, epoch) = {
        let mut shared = store.current();
        let retention_asked = shared.retention_cutoff.is_some();
        if shared.snapshot.active || (shared.generation_bytes == 0 && !retention_asked) {
            return Ok(());
        }
        let boundary = shared.next_seq - 1;
        let answer = inner
            .journal
            .rotate(shared.generation + 1)
            .map_err(std::io::Error::other)?;
        shared.snapshot.active = true;
        shared.snapshot.at = Some(boundary);
        if shared.state.image().last_seq == boundary {
            shared.snapshot.image = Some(shared.state.image().clone());
        }
        let folded = shared.generation;
        shared.generation += 1;
        shared.generation_bytes = 0;
        (answer, boundary, folded, shared.epoch)
    };
    let running = Running { store };
    let rotated = answer
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("journal writer stopped")));
    if let Err(error) = rotated {
        // The writer keeps the old journal; the generation it was to start never began.
        let mut shared = store.lock();
        shared.generation -= 1;
        return Err(error);
    }
    inner
        .journal
        .wait(boundary, epoch)
        .await
        .map_err(|reason| std::io::Error::other(reason.to_string()))?;
    let (image, legacy_generation) = {
        let mut shared = store.current();
        let image = shared.snapshot.image.take();
        (image, shared.manifest.legacy_generation)
    };
    let Some(image) = image else {
        return Err(std::io::Error::other(
            "the journal lost the changes before the snapshot point",
        ));
    };
    let configured = inner.options.retention.and_then(|retention| {
        let cutoff = std::time::SystemTime::now().checked_sub(retention)?;
        let millis = cutoff
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis();
        crm_domain::timestamp::Timestamp::from_unix_millis(i64::try_from(millis).ok()?)
    });
    let expire_before = configured.max(store.lock().retention_cutoff);
    let dir = inner.dir.clone();
    let snapshot = Snapshot {
        image,
        generation: folded_generation,
        legacy_generation,
    };
    let writing = std::time::Instant::now();
    let (manifest, retained) = compaction::commit(&dir, &snapshot, expire_before)?;
    tracing::info!(
        generation = folded_generation,
        records = boundary,
        snapshot_bytes = manifest.snapshot_bytes(),
        written_ms = writing.elapsed().as_millis() as u64,
        events_expired = retained.events_removed,
        outbound_items_expired = retained.items_removed,
        "file store compacted"
    );
    let deleted_through = manifest.events_deleted_through;
    {
        let mut shared = store.lock();
        shared.manifest = manifest;
        shared.retained_total.events_removed += retained.events_removed;
        shared.retained_total.items_removed += retained.items_removed;
    }
    // Retention in memory, a slice at a time so that no caller waits long on the lock,
    // and before the round counts as finished: whoever waited for it sees it done.
    while store
        .lock()
        .state
        .forget_events_through(deleted_through, 1_000)
    {}
    if let Some(cutoff) = expire_before {
        while store.lock().state.forget_finished_before(cutoff, 1_000).1 {}
    }
    drop(running);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crm_ports::conformance::{at, create_campaign, tenant};

    use crate::{FileStore, FileStoreOptions};

    #[tokio::test]
    async fn a_writers_request_starts_no_round_once_the_journal_is_under_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let options = FileStoreOptions {
            compact_after_bytes: u64::MAX,
            ..FileStoreOptions::default()
        };
        let store = FileStore::open(dir.path(), options).unwrap();
        create_campaign(&store, &tenant("tenant_a"), at(0)).await;
        let compactor = &store.inner.compactor;
        let mut rounds = compactor.rounds.clone();

        // What a writer asks, late, after a round already folded the journal: nothing.
        compactor.request();
        // A round starts within microseconds of a request; this bounds the wait for one
        // that must not come.
        let started = tokio::time::timeout(
            Duration::from_millis(300),
            rounds.wait_for(|rounds| rounds.started > 0),
        )
        .await
        .is_ok();
        assert!(!started, "a round started: {:?}", *rounds.borrow());

        // Retention and the final compaction fold whatever the journal holds.
        compactor.request_and_watch().await;
        let done = *rounds.borrow();
        assert_eq!((done.started, done.finished), (1, 1));
    }
}
