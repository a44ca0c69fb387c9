//! The controller and the controller lease on a store that fails as FoundationDB does
//! ([`FaultyStore`] over the embedded SQLite store, real files with fsync): conflicts, commit
//! results unknown after a commit and after none, retries that run out, FoundationDB's size
//! limits. Every acknowledged append must be in the log exactly once, at the seqs it was
//! acknowledged with, and every conversation's seqs must be gap-free, through faults and
//! controller restarts; a deposed controller's writes never land.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cadre_actors::controller::{AppendError, AppendRequest, Controller, HistoryLimits, NewEvent};
use cadre_actors::store::faults::{FaultRates, FaultyStore};
use cadre_actors::store::lease::{self, Claim, FencedStore, Renewal};
use cadre_actors::store::{MAX_VALUE_BYTES, Store, StoreError};
use cadre_cluster::store::SqliteStore;
use cadre_proto::v1::{Event, OutputEmitted, event};
use rand::{Rng, SeedableRng};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cadre-faults-{tag}-{}-{}",
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

fn outputs(conv: &str, key: &str, n: usize) -> AppendRequest {
    AppendRequest {
        conversation_id: conv.into(),
        events: (0..n)
            .map(|i| NewEvent {
                exec_id: String::new(),
                kind: event::Kind::OutputEmitted(OutputEmitted {
                    text: format!("{key}/{i}"),
                }),
            })
            .collect(),
        idempotency_key: Some(key.into()),
        open_exec: None,
        owner: None,
    }
}

fn text(e: &Event) -> &str {
    match &e.kind {
        Some(event::Kind::OutputEmitted(o)) => &o.text,
        other => panic!("unexpected event {other:?}"),
    }
}

/// The store under the faults: FoundationDB in a directory of its own when
/// `$CADRE_TEST_FDB_CLUSTER_FILE` names a cluster (builds with the `foundationdb` feature),
/// else the embedded SQLite store in `dir`.
fn backing_store(dir: &Dir) -> Arc<dyn Store> {
    #[cfg(feature = "foundationdb")]
    if let Some(file) = std::env::var_os("CADRE_TEST_FDB_CLUSTER_FILE") {
        let name = dir.0.file_name().unwrap().to_string_lossy().into_owned();
        return Arc::new(
            cadre_cluster::store::FdbStore::open(std::path::Path::new(&file), "cadre-test", &name)
                .expect("open FoundationDB"),
        );
    }
    Arc::new(SqliteStore::open(&dir.0).unwrap())
}

/// Starts a controller over `store`, again and again while faults make its startup fail.
async fn start(
    store: Arc<dyn Store>,
) -> (
    Controller,
    ractor::ActorRef<cadre_actors::controller::ControllerMsg>,
) {
    for _ in 0..50 {
        let c = Controller::new(store.clone(), HistoryLimits::default());
        match c.start_detached().await {
            Ok(actor) => return (c, actor),
            Err(e) => tracing::debug!(error = %e, "controller start met a fault; again"),
        }
    }
    panic!("the controller did not start in 50 tries");
}

async fn all_events(c: &Controller, conv: &str) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let page = c.read(conv, out.len() as u64, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Appends each of the four writers makes in one run.
const APPENDS_PER_WRITER: usize = 60;

/// What one acknowledged append was: its conversation, its event count and its seqs.
type Acked = BTreeMap<String, (String, usize, u64, u64)>;

/// Writers append with idempotency keys and retry each append until it is acknowledged, while
/// the controller is stopped and started again over the same faulty store every `every`. Half
/// the retries wait for the next controller, as a client does whose controller died with its
/// commit's result unknown. Then, read without faults: each acknowledged append is there once,
/// at its seqs.
async fn appends_survive_faults_and_restarts(seed: u64, rates: FaultRates, every: Duration) {
    let dir = Dir::new("prop");
    let backing = backing_store(&dir);
    let faulty = Arc::new(FaultyStore::new(backing.clone(), rates, seed));
    let (first, actor) = start(faulty.clone()).await;
    let current = Arc::new(RwLock::new(first));
    let (restarted, _) = tokio::sync::watch::channel(0u64);
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (current, acked) = (current.clone(), acked.clone());
        let mut restarts = restarted.subscribe();
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + w);
            for j in 0..APPENDS_PER_WRITER {
                let conv = format!("c{}", rng.random_range(0..3));
                let key = format!("w{w}-{j}");
                let n = rng.random_range(1..=3);
                // Now and then an event larger than one store value (split into chunks).
                let request = if j % 13 == 5 {
                    let mut r = outputs(&conv, &key, 1);
                    if let event::Kind::OutputEmitted(o) = &mut r.events[0].kind {
                        o.text.push_str(&"x".repeat(MAX_VALUE_BYTES * 2));
                    }
                    r
                } else {
                    outputs(&conv, &key, n)
                };
                let n = request.events.len();
                loop {
                    let c = current.read().unwrap().clone();
                    match c.append(request.clone()).await {
                        Ok(a) => {
                            acked
                                .lock()
                                .unwrap()
                                .insert(key.clone(), (conv.clone(), n, a.first_seq, a.last_seq));
                            break;
                        }
                        Err(AppendError::Store(_) | AppendError::Unavailable) => {
                            if rng.random_bool(0.5) {
                                restarts.borrow_and_update();
                                let _ = restarts.changed().await;
                            } else {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                        Err(e) => panic!("seed {seed}: append {key} refused: {e}"),
                    }
                }
            }
        }));
    }
    let mut actor = actor;
    let mut restarts = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        tokio::time::sleep(every).await;
        actor.stop_and_wait(None, None).await.unwrap();
        let (next, next_actor) = start(faulty.clone()).await;
        *current.write().unwrap() = next;
        actor = next_actor;
        restarts += 1;
        restarted.send_replace(restarts);
    }
    for w in writers {
        w.await.unwrap();
    }
    actor.stop_and_wait(None, None).await.unwrap();
    let counts = &faulty.counts;
    let injected = counts.conflicts.load(Ordering::Relaxed)
        + counts.unknown_committed.load(Ordering::Relaxed)
        + counts.unknown_not_committed.load(Ordering::Relaxed);
    if rates != FaultRates::NONE {
        assert!(injected > 0, "seed {seed}: no fault was injected");
    }

    // Read it all back through a controller without faults (it replays what is left).
    let (reader, reader_actor) = start(backing).await;
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        4 * APPENDS_PER_WRITER,
        "seed {seed}: every append was acknowledged"
    );
    let mut texts_by_conv: HashMap<String, Vec<Event>> = HashMap::new();
    for conv in ["c0", "c1", "c2"] {
        let events = all_events(&reader, conv).await;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e.seq,
                i as u64 + 1,
                "seed {seed}: {conv} has a gap or a duplicate seq"
            );
        }
        texts_by_conv.insert(conv.into(), events);
    }
    for (key, (conv, n, first, last)) in &acked {
        let events = &texts_by_conv[conv];
        let found = events
            .iter()
            .filter(|e| text(e).split('/').next() == Some(key.as_str()))
            .count();
        assert_eq!(
            found, *n,
            "seed {seed}: append {key} is in {conv} {found} times, not once"
        );
        assert_eq!(last - first + 1, *n as u64);
        for seq in *first..=*last {
            let e = &events[seq as usize - 1];
            assert!(
                text(e).starts_with(&format!("{key}/")),
                "seed {seed}: {key} was acknowledged at seq {seq}, which holds {}",
                &text(e)[..text(e).len().min(40)]
            );
        }
    }
    let total: usize = texts_by_conv.values().map(Vec::len).sum();
    let acked_events: usize = acked.values().map(|(_, n, _, _)| n).sum();
    assert_eq!(
        total, acked_events,
        "seed {seed}: the log holds exactly the acknowledged events"
    );
    reader_actor.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_append_is_in_the_log_once_through_random_faults_and_restarts() {
    for seed in 1..=8 {
        appends_survive_faults_and_restarts(seed, FaultRates::HARSH, Duration::from_millis(25))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_faults_the_same_run_holds_too() {
    appends_survive_faults_and_restarts(0, FaultRates::NONE, Duration::from_millis(50)).await;
}

#[test]
fn the_lease_goes_to_one_node_at_a_time_with_rising_epochs_through_faults() {
    let dir = Dir::new("lease");
    let backing = backing_store(&dir);
    let store = FaultyStore::new(backing, FaultRates::HARSH, 42);
    let ttl = Duration::from_millis(1000);
    let nodes = ["a", "b", "c"];
    // What each node believes it holds, on a simulated clock.
    let mut held: HashMap<&str, lease::Lease> = HashMap::new();
    let mut epochs = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut now = 1_000_000u64;
    for _ in 0..600 {
        now += rng.random_range(0..400);
        let node = nodes[rng.random_range(0..3)];
        match held.get(node).cloned() {
            Some(mine) if mine.expires_unix_ms > now => match lease::renew(&store, &mine, ttl, now)
            {
                Ok(Renewal::Renewed(l)) => {
                    held.insert(node, l);
                }
                Ok(Renewal::Lost(_)) => {
                    held.remove(node);
                }
                Err(_) => {}
            },
            _ => {
                held.remove(node);
                if let Ok(Claim::Took(l)) = lease::claim(&store, node, ttl, now) {
                    assert!(
                        epochs.last().is_none_or(|&e| l.epoch > e),
                        "epochs rise: {} after {epochs:?}",
                        l.epoch
                    );
                    epochs.push(l.epoch);
                    held.insert(node, l);
                }
            }
        }
        let holders: Vec<_> = held
            .iter()
            .filter(|(_, l)| l.expires_unix_ms > now)
            .map(|(n, l)| (*n, l.epoch))
            .collect();
        assert!(holders.len() <= 1, "two holders at once: {holders:?}");
    }
    assert!(epochs.len() > 3, "the lease changed hands: {epochs:?}");
    assert!(
        store.counts.given_up.load(Ordering::Relaxed) > 0,
        "faults reached the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_controller_writes_nothing_and_the_next_one_has_every_acknowledged_event() {
    let dir = Dir::new("fenced");
    let backing = backing_store(&dir);
    let ttl = Duration::from_secs(5);
    let Claim::Took(a) = lease::claim(backing.as_ref(), "a", ttl, 1_000).unwrap() else {
        panic!("a takes the free lease");
    };
    assert_eq!(a.epoch, 1);
    let first = Controller::new(
        Arc::new(FencedStore::new(backing.clone(), &a)),
        HistoryLimits::default(),
    );
    let first_actor = first.start_detached().await.unwrap();
    for i in 0..5 {
        first
            .append(outputs("c", &format!("a{i}"), 2))
            .await
            .unwrap();
    }
    // `a` is paused past its lease: `b` takes it.
    assert!(matches!(
        lease::claim(backing.as_ref(), "b", ttl, 2_000).unwrap(),
        Claim::Held(ref l) if l.node == "a"
    ));
    let Claim::Took(b) = lease::claim(backing.as_ref(), "b", ttl, 7_000).unwrap() else {
        panic!("b takes the expired lease");
    };
    assert_eq!((b.node.as_str(), b.epoch), ("b", 2));
    // `a` wakes up: its writes are refused, naming the new controller.
    let refused = first.append(outputs("c", "late", 1)).await.unwrap_err();
    assert!(
        matches!(&refused, AppendError::Store(StoreError::Fenced { controller, epoch: 2 }) if controller == "b"),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("node b holds the lease (epoch 2)"),
        "{refused}"
    );
    assert!(matches!(
        lease::renew(backing.as_ref(), &a, ttl, 7_500).unwrap(),
        Renewal::Lost(ref l) if l.node == "b"
    ));
    let second = Controller::new(
        Arc::new(FencedStore::new(backing.clone(), &b)),
        HistoryLimits::default(),
    );
    let second_actor = second.start_detached().await.unwrap();
    let events = all_events(&second, "c").await;
    let texts: Vec<&str> = events.iter().map(text).collect();
    assert_eq!(
        texts.len(),
        10,
        "every acknowledged event, and nothing of `a` after: {texts:?}"
    );
    assert!(!texts.iter().any(|t| t.starts_with("late")));
    assert_eq!(
        second
            .append(outputs("c", "b0", 1))
            .await
            .unwrap()
            .first_seq,
        11,
        "seqs go on without a gap"
    );
    first_actor.stop_and_wait(None, None).await.unwrap();
    second_actor.stop_and_wait(None, None).await.unwrap();
}
