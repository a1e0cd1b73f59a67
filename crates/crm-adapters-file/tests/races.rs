//! Writers that meet a drain deciding: the drain's decision comes first.

mod support;

use std::sync::{Arc, Mutex, mpsc};
use std::task::Poll;
use std::time::Duration;

use crm_domain::follow_up::FollowUpStatus;
use crm_ports::conformance::{SendAll, at, schedule, tenant};
use crm_ports::{
    DispatchDecision, Dispatcher, DrainPlan, DueFollowUp, FollowUpStore, LaneState, Planner,
};
use support::open_quiet;

/// Sends like `SendAll`, but says when it starts deciding and waits to be let go.
struct Held {
    send: SendAll,
    deciding: Mutex<mpsc::Sender<()>>,
    go: Mutex<mpsc::Receiver<()>>,
}

impl Planner for Held {
    fn plan(&self, lanes: &[LaneState]) -> DrainPlan {
        self.send.plan(lanes)
    }
}

impl Dispatcher for Held {
    fn decide(&self, due: &DueFollowUp) -> DispatchDecision {
        self.deciding.lock().unwrap().send(()).unwrap();
        self.go
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .unwrap();
        self.send.decide(due)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_saved_while_a_drain_decides_the_follow_up_waits_and_finds_it_sent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_quiet(dir.path()).unwrap());
    let tenant_id = tenant("tenant_a");
    let follow_up = schedule(&*store, &tenant_id, None, at(0)).await;
    let (deciding_tx, deciding) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let held = Held {
        send: SendAll::default(),
        deciding: Mutex::new(deciding_tx),
        go: Mutex::new(go_rx),
    };
    let drain = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.drain(at(1_000), 10, &held).await.unwrap() })
    };
    tokio::task::spawn_blocking(move || deciding.recv_timeout(Duration::from_secs(10)).unwrap())
        .await
        .unwrap();

    let (canceled, _) = follow_up.cancel(at(2_000)).unwrap().unwrap();
    let mut save = std::pin::pin!(store.save_follow_up(&canceled, FollowUpStatus::Pending, &[]));
    // One step of the save, here and now: it finds the follow-up claimed and waits.
    let first = std::future::poll_fn(|cx| Poll::Ready(save.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the save waits for the drain's decision"
    );
    go.send(()).unwrap();

    assert_eq!(drain.await.unwrap().len(), 1);
    assert!(!save.await.unwrap(), "the follow-up was sent meanwhile");
    let stored = store
        .follow_up(&tenant_id, follow_up.followup_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, FollowUpStatus::Sent);
}
