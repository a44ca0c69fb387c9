//! The controller on the embedded store (real SQLite files with fsync): seq assignment, group
//! commit, idempotency, history limits, store failures, subscriptions and startup recovery.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cadre_actors::controller::{
    AppendError, AppendRequest, Controller, DeleteError, HistoryLimits, NewEvent, SubscribeError,
};
use cadre_actors::store::{Store, StoreError, Txn};
use cadre_cluster::store::SqliteStore;
use cadre_proto::v1::{ExecState, ExecStateChanged, OutputEmitted, event};
use rand::{Rng, SeedableRng};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cadre-eventlog-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn output(text: &str) -> NewEvent {
    NewEvent {
        exec_id: "e1".into(),
        kind: event::Kind::OutputEmitted(OutputEmitted { text: text.into() }),
    }
}

fn append(conv: &str, texts: &[&str]) -> AppendRequest {
    AppendRequest {
        conversation_id: conv.into(),
        events: texts.iter().map(|t| output(t)).collect(),
        idempotency_key: None,
        open_exec: None,
        owner: None,
    }
}

fn text(e: &cadre_proto::v1::Event) -> String {
    match &e.kind {
        Some(event::Kind::OutputEmitted(o)) => o.text.clone(),
        other => panic!("unexpected event {other:?}"),
    }
}

async fn controller(store: Arc<dyn Store>, limits: HistoryLimits) -> Controller {
    let c = Controller::new(store, limits);
    c.start_detached().await.unwrap();
    c
}

async fn sqlite(dir: &Dir) -> Controller {
    controller(
        Arc::new(SqliteStore::open(&dir.0).unwrap()),
        HistoryLimits::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_contiguous_seqs_matching_their_content() {
    let dir = Dir::new("seq");
    let c = sqlite(&dir).await;
    let mut tasks = Vec::new();
    for w in 0..32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let conv = format!("conv-{}", w % 4);
            let mut acked = Vec::new();
            for i in 0..50 {
                let body = format!("w{w}-{i}");
                let n = 1 + (i % 3);
                let texts: Vec<String> = (0..n).map(|k| format!("{body}-{k}")).collect();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let a = c.append(append(&conv, &refs)).await.unwrap();
                assert_eq!(a.last_seq - a.first_seq + 1, n as u64);
                for (k, t) in texts.into_iter().enumerate() {
                    acked.push((conv.clone(), a.first_seq + k as u64, t));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let mut by_conv: HashMap<String, HashMap<u64, String>> = HashMap::new();
    for (conv, seq, t) in acked {
        assert!(
            by_conv.entry(conv).or_default().insert(seq, t).is_none(),
            "a seq was given twice"
        );
    }
    for (conv, acks) in by_conv {
        let events = c.read(&conv, 0, usize::MAX).await.unwrap();
        assert_eq!(
            events.len(),
            acks.len(),
            "{conv}: every acked event, nothing more"
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "{conv}: seq starts at 1 with no gaps");
            assert_eq!(e.conversation_id, conv);
            assert_eq!(
                text(e),
                acks[&e.seq],
                "{conv}: the content acked at that seq"
            );
        }
        assert_eq!(c.last_seq(&conv).await.unwrap(), Some(events.len() as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_with_the_same_key_is_written_once() {
    let dir = Dir::new("idem");
    let c = sqlite(&dir).await;
    c.append(append("c", &["before"])).await.unwrap();
    let keyed = AppendRequest {
        idempotency_key: Some("c/e1/step-1".into()),
        open_exec: None,
        owner: None,
        ..append("c", &["once", "only"])
    };
    // Concurrent retries land in the same group commit or in later ones: all must agree.
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            let r = keyed.clone();
            tokio::spawn(async move { c.append(r).await.unwrap() })
        })
        .collect();
    let mut results = Vec::new();
    for t in tries {
        results.push(t.await.unwrap());
    }
    assert!(
        results.iter().all(|a| (a.first_seq, a.last_seq) == (2, 3)),
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|a| !a.duplicate).count(),
        1,
        "exactly one write"
    );
    let later = c.append(keyed.clone()).await.unwrap();
    assert!(later.duplicate && later.first_seq == 2);
    // The same key in another conversation is another append.
    let other = c
        .append(AppendRequest {
            conversation_id: "d".into(),
            ..keyed
        })
        .await
        .unwrap();
    assert!(!other.duplicate && other.first_seq == 1);
    let texts: Vec<_> = c
        .read("c", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert_eq!(texts, ["before", "once", "only"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_limit_refuses_and_loses_nothing() {
    let dir = Dir::new("limit");
    let limits = HistoryLimits {
        max_events_per_conversation: 5,
        warn_percent: 80,
    };
    let c = controller(Arc::new(SqliteStore::open(&dir.0).unwrap()), limits).await;
    c.append(append("c", &["1", "2", "3", "4"])).await.unwrap();
    let err = c.append(append("c", &["5", "6"])).await.unwrap_err();
    assert_eq!(
        err,
        AppendError::HistoryLimit {
            conversation_id: "c".into(),
            limit: 5
        }
    );
    assert!(
        err.to_string().contains("max_events_per_conversation"),
        "{err}"
    );
    assert_eq!(
        c.last_seq("c").await.unwrap(),
        Some(4),
        "the refused append wrote nothing"
    );
    c.append(append("c", &["5"])).await.unwrap();
    assert!(c.append(append("c", &["6"])).await.is_err());
    assert!(
        c.append(append("other", &["1"])).await.is_ok(),
        "the cap is per conversation"
    );
}

/// The real SQLite store, made to fail its next commits on demand.
struct Flaky {
    inner: SqliteStore,
    fail: AtomicBool,
}

impl Store for Flaky {
    fn transact(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.transact(&mut |t| {
            f(t)?;
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Io("disk on fire".into()));
            }
            Ok(())
        })
    }

    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.read(f)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_an_error_and_leaves_no_trace() {
    let dir = Dir::new("flaky");
    let store = Arc::new(Flaky {
        inner: SqliteStore::open(&dir.0).unwrap(),
        fail: AtomicBool::new(false),
    });
    let c = controller(store.clone(), HistoryLimits::default()).await;
    c.append(append("c", &["ok-1"])).await.unwrap();
    store.fail.store(true, Ordering::SeqCst);
    let err = c
        .append(append("c", &["lost-1", "lost-2"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Store(StoreError::Io(_))),
        "{err:?}"
    );
    store.fail.store(false, Ordering::SeqCst);
    let next = c.append(append("c", &["ok-2"])).await.unwrap();
    assert_eq!(next.first_seq, 2, "the failed append consumed no seq");
    let texts: Vec<_> = c
        .read("c", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert_eq!(texts, ["ok-1", "ok-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_append_fails_alone() {
    let dir = Dir::new("big");
    let c = sqlite(&dir).await;
    c.append(append("small", &["x"])).await.unwrap();
    let huge = "y".repeat(3 << 20);
    let big = AppendRequest {
        conversation_id: "big".into(),
        events: (0..4).map(|_| output(&huge)).collect(),
        idempotency_key: None,
        open_exec: None,
        owner: None,
    };
    let (a, b) = tokio::join!(c.append(big), c.append(append("small", &["z"])));
    assert!(
        matches!(a, Err(AppendError::Store(StoreError::TooLarge { .. }))),
        "{a:?}"
    );
    assert_eq!(b.unwrap().first_seq, 2);
    assert_eq!(c.last_seq("big").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_anywhere_see_every_event_once_in_order() {
    let dir = Dir::new("subs");
    let c = sqlite(&dir).await;
    let convs = ["a", "b", "c"];
    for conv in convs {
        c.append(append(conv, &["seed"])).await.unwrap();
    }
    const PER_WRITER: u64 = 400;
    const WRITERS: u64 = 6;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let conv = ["a", "b", "c"][(w % 3) as usize];
                for i in 0..PER_WRITER {
                    c.append(append(conv, &[&format!("{w}-{i}")]))
                        .await
                        .unwrap();
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let total_per_conv = 1 + PER_WRITER * WRITERS / 3;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut readers = Vec::new();
    for r in 0..24 {
        let c = c.clone();
        let conv = convs[r % 3];
        let delay = rng.random_range(0..40u64);
        readers.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            let end = c.last_seq(conv).await.unwrap().unwrap();
            let after = if end == 0 {
                0
            } else {
                rand::random_range(0..=end)
            };
            let mut sub = c.subscribe(conv, after).await.unwrap();
            let mut expect = after + 1;
            while expect <= total_per_conv {
                let e = sub
                    .next()
                    .await
                    .expect("stream continues")
                    .expect("no error");
                assert_eq!(e.seq, expect, "{conv}: in order, no gap, no duplicate");
                expect += 1;
            }
            (conv, after)
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_off_with_an_error_and_does_not_stall_writers() {
    let dir = Dir::new("slow");
    let c = sqlite(&dir).await;
    c.append(append("c", &["1"])).await.unwrap();
    let mut sub = c.subscribe("c", 1).await.unwrap();
    // Go live (the first next() waits for a live event; give it one).
    let first = c.clone();
    let head = tokio::spawn(async move { first.append(append("c", &["2"])).await.unwrap() });
    assert_eq!(sub.next().await.unwrap().unwrap().seq, 2);
    head.await.unwrap();
    let burst: Vec<String> = (0..5000).map(|i| format!("b{i}")).collect();
    for chunk in burst.chunks(500) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        c.append(append("c", &refs)).await.unwrap();
    }
    let mut seen = 2;
    let err = loop {
        match sub.next().await {
            Some(Ok(e)) => {
                assert_eq!(e.seq, seen + 1);
                seen = e.seq;
            }
            Some(Err(e)) => break e,
            None => panic!("ended without an error"),
        }
    };
    assert!(
        matches!(err, SubscribeError::TooSlow { last_seq, .. } if last_seq == seen),
        "{err:?}"
    );
    assert!(sub.next().await.is_none());
    // Resubscribing from where it stopped gets the rest.
    let mut again = c.subscribe("c", seen).await.unwrap();
    assert_eq!(again.next().await.unwrap().unwrap().seq, seen + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_past_the_end_or_to_nothing_is_an_error() {
    let dir = Dir::new("range");
    let c = sqlite(&dir).await;
    c.append(append("c", &["1", "2"])).await.unwrap();
    assert!(matches!(
        c.subscribe("c", 3).await.err(),
        Some(SubscribeError::OutOfRange {
            after_seq: 3,
            last_seq: 2,
            ..
        })
    ));
    assert!(matches!(
        c.subscribe("nope", 0).await.err(),
        Some(SubscribeError::NotFound(_))
    ));
    assert!(
        c.subscribe("c", 2).await.is_ok(),
        "after_seq at the end waits for live events"
    );
}

fn state(exec: &str, s: ExecState) -> NewEvent {
    NewEvent {
        exec_id: exec.into(),
        kind: event::Kind::ExecStateChanged(ExecStateChanged {
            state: s as i32,
            ..Default::default()
        }),
    }
}

fn running_on(exec: &str, node: &str) -> NewEvent {
    NewEvent {
        exec_id: exec.into(),
        kind: event::Kind::ExecStateChanged(ExecStateChanged {
            state: ExecState::Running as i32,
            node: node.into(),
            ..Default::default()
        }),
    }
}

fn request(conversation: &str, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        conversation_id: conversation.into(),
        events,
        idempotency_key: None,
        open_exec: None,
        owner: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_keeps_its_node_through_state_changes_and_restarts() {
    let dir = Dir::new("owners");
    {
        let c = Controller::new(
            Arc::new(SqliteStore::open(&dir.0).unwrap()),
            HistoryLimits::default(),
        );
        let actor = c.start_detached().await.unwrap();
        c.append(request("c", vec![running_on("e", "node-b")]))
            .await
            .unwrap();
        // The agent's own state changes name no node: the log keeps the owner.
        c.append(request("c", vec![state("e", ExecState::WaitingApproval)]))
            .await
            .unwrap();
        let events = c.read("c", 1, 10).await.unwrap();
        let Some(event::Kind::ExecStateChanged(change)) = &events[0].kind else {
            panic!("{events:?}");
        };
        assert_eq!(change.node, "node-b", "filled in by the controller");
        let owners: Vec<_> = c.open_execs().into_iter().map(|o| o.node).collect();
        assert_eq!(owners, ["node-b"]);
        actor.stop_and_wait(None, None).await.unwrap();
    }
    let c = sqlite(&dir).await;
    let open = c.open_execs();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].node.as_str(), open[0].state),
        ("node-b", ExecState::WaitingApproval)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_move_of_an_exec_is_a_new_lease_and_an_earlier_lease_cannot_write() {
    use cadre_actors::event_log::Owner;
    let dir = Dir::new("leases");
    let by = |node: &str, epoch: u64| AppendRequest {
        open_exec: Some("e".into()),
        owner: Some(Owner {
            node: node.into(),
            epoch,
        }),
        ..request("c", vec![output("step")])
    };
    let epochs = |c: &Controller| -> Vec<(String, u64)> {
        c.open_execs()
            .into_iter()
            .map(|o| (o.node, o.epoch))
            .collect()
    };
    {
        let c = Controller::new(
            Arc::new(SqliteStore::open(&dir.0).unwrap()),
            HistoryLimits::default(),
        );
        let actor = c.start_detached().await.unwrap();
        c.append(request("c", vec![running_on("e", "a")]))
            .await
            .unwrap();
        // Resumed on the same node (after its crash): the same lease.
        c.append(request("c", vec![running_on("e", "a")]))
            .await
            .unwrap();
        assert_eq!(epochs(&c), [("a".to_string(), 1)]);
        c.append(by("a", 1)).await.expect("the lease holder writes");
        // Taken over by b, then given back to a (b went down too): lease 3 of a.
        c.append(request("c", vec![running_on("e", "b")]))
            .await
            .unwrap();
        c.append(request("c", vec![running_on("e", "a")]))
            .await
            .unwrap();
        assert_eq!(epochs(&c), [("a".to_string(), 3)]);
        actor.stop_and_wait(None, None).await.unwrap();
    }
    let c = sqlite(&dir).await;
    assert_eq!(
        epochs(&c),
        [("a".to_string(), 3)],
        "the index keeps the lease"
    );
    let before = c.last_seq("c").await.unwrap();
    // An agent of a's first lease (paused across both moves) is refused; a's current lease,
    // or any lease of a, is not.
    assert_eq!(
        c.append(by("a", 1)).await,
        Err(AppendError::ExecMoved {
            conversation_id: "c".into(),
            exec_id: "e".into(),
            node: "a".into()
        })
    );
    assert!(matches!(
        c.append(by("b", 2)).await,
        Err(AppendError::ExecMoved { .. })
    ));
    assert_eq!(c.last_seq("c").await.unwrap(), before, "nothing written");
    c.append(by("a", 3)).await.unwrap();
    c.append(by("a", 0)).await.unwrap();
    let events = c.read("c", 0, 100).await.unwrap();
    let leases: Vec<(String, u64)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::ExecStateChanged(s)) => Some((s.node.clone(), s.epoch)),
            _ => None,
        })
        .collect();
    let want = [("a", 1), ("a", 1), ("b", 2), ("a", 3)].map(|(n, e)| (n.to_string(), e));
    assert_eq!(leases, want, "each RUNNING records its lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_exec_cannot_open_in_a_conversation_until_the_first_ends() {
    let dir = Dir::new("one-exec");
    let c = sqlite(&dir).await;
    c.append(request("c", vec![running_on("first", "a")]))
        .await
        .unwrap();
    let second = c
        .append(request("c", vec![running_on("second", "b")]))
        .await;
    assert_eq!(
        second,
        Err(AppendError::ExecRunning {
            conversation_id: "c".into(),
            exec_id: "first".into()
        })
    );
    assert_eq!(c.last_seq("c").await.unwrap(), Some(1), "nothing written");
    c.append(request("other", vec![running_on("second", "b")]))
        .await
        .expect("another conversation is free");
    // The first exec's own appends (fenced on it) go on; once it ends, the next may start.
    c.append(AppendRequest {
        open_exec: Some("first".into()),
        owner: None,
        ..request("c", vec![state("first", ExecState::Completed)])
    })
    .await
    .unwrap();
    c.append(request("c", vec![running_on("second", "b")]))
        .await
        .expect("the first has ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_execs_are_found_and_marked_at_startup() {
    let dir = Dir::new("recovery");
    {
        let c = Controller::new(
            Arc::new(SqliteStore::open(&dir.0).unwrap()),
            HistoryLimits::default(),
        );
        let actor = c.start_detached().await.unwrap();
        let events = vec![
            state("done", ExecState::Running),
            state("done", ExecState::Completed),
            state("running", ExecState::Running),
            state("waiting", ExecState::Pending),
            state("waiting", ExecState::WaitingApproval),
            state("failed", ExecState::Failed),
        ];
        c.append(AppendRequest {
            conversation_id: "c".into(),
            events,
            idempotency_key: None,
            open_exec: None,
            owner: None,
        })
        .await
        .unwrap();
        let mut now: Vec<_> = c.open_execs().into_iter().map(|o| o.exec_id).collect();
        now.sort();
        assert_eq!(now, ["running", "waiting"], "the execs open now");
        actor.stop_and_wait(None, None).await.unwrap();
    }
    let c = sqlite(&dir).await;
    let mut open: Vec<_> = c
        .open_execs()
        .into_iter()
        .map(|o| (o.exec_id, o.state))
        .collect();
    open.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        open,
        [
            ("running".to_string(), ExecState::Running),
            ("waiting".to_string(), ExecState::WaitingApproval)
        ]
    );
}

/// The real store; while `block` is set, transactions that write materialized events fail, so
/// committed events stay in the log only.
struct NoMaterialize {
    inner: SqliteStore,
    block: AtomicBool,
}

struct BlockMaterialize<'a> {
    inner: &'a mut dyn Txn,
}

impl Txn for BlockMaterialize<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn range(
        &mut self,
        b: &[u8],
        e: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<cadre_actors::store::Kv>, StoreError> {
        self.inner.range(b, e, limit, reverse)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let events =
            cadre_actors::store::tuple::pack(&[cadre_actors::store::tuple::Elem::Str("conv")]);
        if key.starts_with(&events) {
            return Err(StoreError::Io("materialization blocked by the test".into()));
        }
        self.inner.set(key, value)
    }
    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.inner.clear(key)
    }
    fn clear_range(&mut self, b: &[u8], e: &[u8]) -> Result<(), StoreError> {
        self.inner.clear_range(b, e)
    }
}

impl Store for NoMaterialize {
    fn transact(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.block.load(Ordering::SeqCst) {
            self.inner
                .transact(&mut |t| f(&mut BlockMaterialize { inner: t }))
        } else {
            self.inner.transact(f)
        }
    }
    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.read(f)
    }
}

fn raw_count(store: &dyn Store, prefix: &[cadre_actors::store::tuple::Elem<'_>]) -> usize {
    let (b, e) = cadre_actors::store::tuple::range(prefix);
    let mut n = 0;
    store
        .read(&mut |t| {
            n = t.range(&b, &e, usize::MAX, false)?.len();
            Ok(())
        })
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_are_materialized_and_leave_the_log() {
    use cadre_actors::store::tuple::Elem;
    let dir = Dir::new("materialize");
    let store = Arc::new(SqliteStore::open(&dir.0).unwrap());
    let c = controller(store.clone(), HistoryLimits::default()).await;
    for i in 0..50 {
        c.append(append(&format!("m{}", i % 5), &["a", "b"]))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while raw_count(store.as_ref(), &[Elem::Str("log")]) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never drained"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        raw_count(store.as_ref(), &[Elem::Str("conv")]),
        100,
        "every event materialized"
    );
    for m in 0..5 {
        let conv = format!("m{m}");
        assert_eq!(
            raw_count(store.as_ref(), &[Elem::Str("conv"), Elem::Str(&conv)]),
            20
        );
        assert_eq!(c.last_seq(&conv).await.unwrap(), Some(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_what_was_committed_but_not_materialized() {
    use cadre_actors::store::tuple::Elem;
    let dir = Dir::new("replay");
    {
        let store = Arc::new(NoMaterialize {
            inner: SqliteStore::open(&dir.0).unwrap(),
            block: AtomicBool::new(true),
        });
        let c = Controller::new(store.clone(), HistoryLimits::default());
        let actor = c.start_detached().await.unwrap();
        let keyed = AppendRequest {
            idempotency_key: Some("k".into()),
            open_exec: None,
            owner: None,
            ..append("r", &["3", "4"])
        };
        c.append(append("r", &["1", "2"])).await.unwrap();
        c.append(keyed).await.unwrap();
        c.append(AppendRequest {
            conversation_id: "r".into(),
            events: vec![state("x", ExecState::Running)],
            idempotency_key: None,
            open_exec: None,
            owner: None,
        })
        .await
        .unwrap();
        // Served from the tail while the log cannot be materialized.
        let texts: Vec<_> = c.read("r", 1, 2).await.unwrap().iter().map(text).collect();
        assert_eq!(texts, ["2", "3"]);
        assert_eq!(
            raw_count(store.as_ref(), &[Elem::Str("conv")]),
            0,
            "nothing materialized"
        );
        assert_eq!(
            raw_count(store.as_ref(), &[Elem::Str("log")]),
            3,
            "all of it in the log, one record per group commit"
        );
        actor.stop_and_wait(None, None).await.unwrap();
    }
    let store = Arc::new(SqliteStore::open(&dir.0).unwrap());
    let c = controller(store.clone(), HistoryLimits::default()).await;
    assert_eq!(
        raw_count(store.as_ref(), &[Elem::Str("log")]),
        0,
        "replayed at startup"
    );
    assert_eq!(
        raw_count(store.as_ref(), &[Elem::Str("conv"), Elem::Str("r")]),
        5
    );
    assert_eq!(c.last_seq("r").await.unwrap(), Some(5));
    let again = c
        .append(AppendRequest {
            idempotency_key: Some("k".into()),
            open_exec: None,
            owner: None,
            ..append("r", &["3", "4"])
        })
        .await
        .unwrap();
    assert!(
        again.duplicate && again.first_seq == 3,
        "the idempotency record was replayed too: {again:?}"
    );
    let open: Vec<_> = c.open_execs().into_iter().map(|o| o.exec_id).collect();
    assert_eq!(open, ["x"], "the exec index was replayed too");
    assert_eq!(c.append(append("r", &["6"])).await.unwrap().first_seq, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_to_a_finished_exec_are_refused_and_write_nothing() {
    let dir = Dir::new("fence");
    let in_exec = |exec: &str, texts: &[&str]| AppendRequest {
        open_exec: Some(exec.into()),
        owner: None,
        ..append("f", texts)
    };
    let states = |events: Vec<NewEvent>| AppendRequest {
        conversation_id: "f".into(),
        events,
        idempotency_key: None,
        open_exec: None,
        owner: None,
    };
    {
        let c = Controller::new(
            Arc::new(SqliteStore::open(&dir.0).unwrap()),
            HistoryLimits::default(),
        );
        let actor = c.start_detached().await.unwrap();
        let never = c.append(in_exec("x", &["too early"])).await.unwrap_err();
        assert!(
            matches!(&never, AppendError::ExecFinished { exec_id, .. } if exec_id == "x"),
            "{never:?}"
        );
        assert_eq!(c.last_seq("f").await.unwrap(), None, "nothing written");
        c.append(states(vec![
            state("x", ExecState::Running),
            state("y", ExecState::Running),
        ]))
        .await
        .unwrap();
        assert_eq!(c.append(in_exec("x", &["a"])).await.unwrap().first_seq, 3);
        c.append(states(vec![state("x", ExecState::Cancelled)]))
            .await
            .unwrap();
        let refused = c.append(in_exec("x", &["b", "c"])).await.unwrap_err();
        assert!(
            matches!(refused, AppendError::ExecFinished { .. }),
            "{refused:?}"
        );
        assert_eq!(
            c.last_seq("f").await.unwrap(),
            Some(4),
            "nothing of it written"
        );
        // Concurrent appends to one exec: the state change wins over those queued after it.
        let c2 = c.clone();
        let finish = tokio::spawn(async move {
            c2.append(states(vec![state("y", ExecState::Completed)]))
                .await
        });
        let after: Vec<_> = (0..20)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.append(in_exec("y", &[&format!("y{i}")])).await })
            })
            .collect();
        let finished_at = finish.await.unwrap().unwrap().first_seq;
        for task in after {
            match task.await.unwrap() {
                Ok(a) => assert!(a.first_seq < finished_at, "appended after the exec ended"),
                Err(e) => assert!(matches!(e, AppendError::ExecFinished { .. }), "{e:?}"),
            }
        }
        c.append(states(vec![state("z", ExecState::Running)]))
            .await
            .unwrap();
        actor.stop_and_wait(None, None).await.unwrap();
    }
    // Which execs are open survives a restart (it is rebuilt from the exec index).
    let c = sqlite(&dir).await;
    c.append(in_exec("z", &["still open"])).await.unwrap();
    assert!(c.append(in_exec("x", &["no"])).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_conversation_is_gone_and_its_id_starts_over() {
    let dir = Dir::new("delete");
    let open = || async {
        let c = Controller::new(
            Arc::new(SqliteStore::open(&dir.0).unwrap()),
            HistoryLimits::default(),
        );
        let actor = c.start_detached().await.unwrap();
        (c, actor)
    };
    let keyed = |conv: &str, texts: &[&str]| AppendRequest {
        idempotency_key: Some("k".into()),
        ..append(conv, texts)
    };
    let (c, actor) = open().await;
    c.append(keyed("a", &["a1", "a2"])).await.unwrap();
    c.append(AppendRequest {
        events: vec![state("x", ExecState::Running)],
        ..append("a", &[])
    })
    .await
    .unwrap();
    c.append(append("b", &["b1"])).await.unwrap();
    let mut live = c.subscribe("a", 3).await.unwrap();
    let waiter = tokio::spawn(async move { live.next().await });

    // Refusals change nothing.
    let refused = [
        c.delete("nope").await,
        c.delete(cadre_actors::controller::AUDIT_CONVERSATION).await,
        c.delete("").await,
    ];
    assert!(matches!(&refused[0], Err(DeleteError::NotFound(id)) if id == "nope"));
    assert!(matches!(&refused[1], Err(DeleteError::Invalid(m)) if m.contains("audit")));
    assert!(matches!(&refused[2], Err(DeleteError::Invalid(_))));
    assert_eq!(c.last_seq("a").await.unwrap(), Some(3));

    assert_eq!(c.delete("a").await.unwrap(), 3, "it had three events");
    match waiter.await.unwrap() {
        Some(Err(SubscribeError::Deleted(id))) => assert_eq!(id, "a"),
        other => panic!("a live subscriber must be told: {other:?}"),
    }
    assert_eq!(c.last_seq("a").await.unwrap(), None);
    assert!(c.read("a", 0, 100).await.unwrap().is_empty());
    assert!(matches!(
        c.subscribe("a", 0).await,
        Err(SubscribeError::NotFound(_))
    ));
    assert!(matches!(c.delete("a").await, Err(DeleteError::NotFound(_))));
    let listed: Vec<String> = c
        .list("", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        !listed.contains(&"a".to_string()) && listed.contains(&"b".to_string()),
        "{listed:?}"
    );

    // The id starts over: seq 1, the idempotency key forgotten, the old exec not open.
    let again = c.append(keyed("a", &["new"])).await.unwrap();
    assert_eq!((again.first_seq, again.duplicate), (1, false));
    let old_exec = c
        .append(AppendRequest {
            open_exec: Some("x".into()),
            owner: None,
            ..append("a", &["no"])
        })
        .await;
    assert!(
        matches!(old_exec, Err(AppendError::ExecFinished { .. })),
        "{old_exec:?}"
    );
    let texts = |events: Vec<cadre_proto::v1::Event>| events.iter().map(text).collect::<Vec<_>>();
    assert_eq!(texts(c.read("b", 0, 10).await.unwrap()), ["b1"]);
    actor.stop_and_wait(None, None).await.unwrap();
    drop(c);

    // After a restart (replaying the log) the deleted events stay deleted.
    let (c, actor) = open().await;
    assert_eq!(texts(c.read("a", 0, 10).await.unwrap()), ["new"]);
    assert_eq!(texts(c.read("b", 0, 10).await.unwrap()), ["b1"]);
    assert!(c.open_execs().iter().all(|o| o.conversation_id != "a"));
    actor.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_nodes_claiming_an_actor_at_once_exactly_one_makes_it_home() {
    use cadre_actors::activation::{Home, Homes};
    use cadre_actors::placement::{Isolation, LogicalActor};
    let dir = Dir::new("homes");
    let log: Arc<dyn cadre_actors::event_log::EventLog> = Arc::new(sqlite(&dir).await);
    let homes = Homes::new(log);
    let actor = LogicalActor {
        id: "counter-7".into(),
        tenant: "t".into(),
        isolation: Isolation::Shared,
    };
    assert_eq!(homes.home(&actor.id).await.unwrap(), None);
    // Eight nodes claim the homeless actor at once: each is told the same winner.
    let claims = (0..8).map(|n| {
        let (homes, actor) = (homes.clone(), actor.clone());
        tokio::spawn(async move { homes.claim(&actor, &format!("n{n}"), None, "").await })
    });
    let mut winners = Vec::new();
    for claim in claims {
        winners.push(claim.await.unwrap().unwrap());
    }
    winners.dedup();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let first = winners.remove(0);
    assert_eq!(first.epoch, 1);
    assert_eq!(homes.home(&actor.id).await.unwrap(), Some(first.clone()));
    // Its home goes down: the next claim, after the home it read, is epoch 2; a late claim
    // of epoch 1 (a node that read nothing) learns the home it lost to.
    let moved = homes
        .claim(&actor, "n9", Some(&first), "node is down")
        .await
        .unwrap();
    assert_eq!(
        moved,
        Home {
            node: "n9".into(),
            epoch: 2,
            tenant: "t".into(),
        }
    );
    assert_eq!(homes.claim(&actor, "n3", None, "").await.unwrap(), first);
    assert_eq!(homes.home(&actor.id).await.unwrap(), Some(moved));
}
