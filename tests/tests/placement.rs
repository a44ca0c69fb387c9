//! Placement with real `runsc`: thousands of logical actors on a small warm pool, tenants kept
//! apart, idle actors passivated with their state, and actors lost with a killed sandbox placed
//! again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_actors::placement::{Isolation, LogicalActor, PlacementConfig};
use cadre_proto::v1::worker_client::WorkerClient;
use cadre_proto::v1::{
    ProcessStart, ReadFileRequest, RunInput, WriteFileRequest, run_input, run_output,
};
use cadre_sandbox::{
    GvisorProvider, Placement, PlacementError, PlacementEvent, PoolConfig, ProcessProvider,
    SandboxProvider, WarmPool,
};
use cadre_tests::{TempDir, cadre_bin};
use tonic::transport::Channel;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A pool of `warm` gVisor sandboxes; `name` keeps sandbox ids (and so gVisor's cgroups)
/// apart between tests running at once.
fn pool(dir: &TempDir, name: &str, warm: usize) -> WarmPool {
    let provider = GvisorProvider::new(dir.path().join("state"), cadre_bin())
        .expect("runsc is installed by scripts/setup.sh");
    pool_on(Arc::new(provider), dir, name, warm)
}

fn pool_on(provider: Arc<dyn SandboxProvider>, dir: &TempDir, name: &str, warm: usize) -> WarmPool {
    WarmPool::start(
        provider,
        PoolConfig {
            min: warm,
            max: warm,
            workspaces: dir.path().join("workspaces"),
            images: dir.path().join("images"),
            owners: dir.path().join("owners"),
            memory_bytes: Some(256 << 20),
            cpus: Some(1.0),
            pids: Some(512),
            workspace_quota: None,
            min_free_disk: 0,
            name: format!("{name}-{}", std::process::id()),
        },
    )
}

/// Placement on `pool` with `slots` per sandbox and a queue of `queue`; nothing idles out
/// unless a test passivates it.
fn placement(pool: &WarmPool, slots: usize, queue: usize) -> Placement {
    Placement::start(
        pool.clone(),
        PlacementConfig {
            slots_per_sandbox: slots,
            idle_timeout: Duration::from_secs(600),
            queue_limit: queue,
        },
    )
}

async fn wait_warm(pool: &WarmPool, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while pool.list().len() < n {
        assert!(std::time::Instant::now() < deadline, "{:#?}", pool.list());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `done` holds; fails saying `what` did not happen within `limit`.
async fn until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a shell script in a sandbox; its exit code.
async fn sh(worker: &WorkerClient<Channel>, script: &str) -> i32 {
    sh_out(worker, script).await.0
}

/// Runs a shell script in a sandbox; its exit code and stdout.
async fn sh_out(worker: &WorkerClient<Channel>, script: &str) -> (i32, String) {
    let start = RunInput {
        input: Some(run_input::Input::Start(ProcessStart {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Default::default()
        })),
    };
    let mut outputs = worker
        .clone()
        .run(tokio_stream::iter(vec![start]))
        .await
        .unwrap()
        .into_inner();
    let mut stdout = Vec::new();
    while let Some(out) = outputs.message().await.unwrap() {
        match out.output {
            Some(run_output::Output::Stdout(b)) => stdout.extend(b),
            Some(run_output::Output::Exit(exit)) => {
                return (exit.code, String::from_utf8_lossy(&stdout).into_owned());
            }
            _ => {}
        }
    }
    panic!("no exit")
}

/// SIGKILLs gVisor's sandbox process for the sandbox `id`.
fn kill_sandbox(dir: &TempDir, id: &str) {
    let out = std::process::Command::new("runsc")
        .arg("--root")
        .arg(dir.path().join("state/runsc"))
        .args(["state", id])
        .output()
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = state["pid"].as_i64().expect("runsc state has a pid");
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

fn actor(i: usize, tenants: usize) -> LogicalActor {
    LogicalActor {
        id: format!("actor-{i}"),
        tenant: format!("tenant-{}", i % tenants),
        isolation: Isolation::Shared,
    }
}

#[test]
fn ten_thousand_actors_share_eight_warm_sandboxes_without_mixing_tenants() {
    const ACTORS: usize = 10_000;
    const TENANTS: usize = 4;
    let dir = TempDir::new("placement-10k");
    rt().block_on(async {
        let pool = pool(&dir, "p10k", 8);
        wait_warm(&pool, 8).await;
        let placement = placement(&pool, 64, 4096);
        // Every message and the sandbox that answered it, 64 in flight at a time.
        let mut answered: Vec<(usize, String)> = Vec::with_capacity(ACTORS);
        let mut inflight = tokio::task::JoinSet::new();
        for i in 0..ACTORS {
            if inflight.len() >= 64 {
                answered.push(inflight.join_next().await.unwrap().unwrap());
            }
            let placement = placement.clone();
            inflight.spawn(async move {
                let a = actor(i, TENANTS);
                let payload = format!("hello {i}").into_bytes();
                let got = placement.send(&a, payload.clone()).await.unwrap();
                assert_eq!(got.payload, payload);
                assert_eq!(got.handled, 1);
                assert!(got.activated);
                (i, got.sandbox)
            });
        }
        while let Some(done) = inflight.join_next().await {
            answered.push(done.unwrap());
        }
        assert_eq!(answered.len(), ACTORS, "every actor answered");

        let mut tenant_of: HashMap<String, String> = HashMap::new();
        for (i, sandbox) in &answered {
            let tenant = actor(*i, TENANTS).tenant;
            let seen = tenant_of.entry(sandbox.clone()).or_insert(tenant.clone());
            assert_eq!(*seen, tenant, "sandbox {sandbox} hosted two tenants");
        }
        assert!(pool.list().len() <= 8, "{:#?}", pool.list());
        let used: HashSet<_> = tenant_of.keys().collect();
        assert!(used.len() <= 8, "only the warm pool was used: {used:?}");

        // 8 × 64 slots for 10,000 actors: most were passivated to make room.
        let (known, passive) = placement.counts();
        assert_eq!(known, ACTORS);
        assert!(passive >= ACTORS - 8 * 64, "{passive} passive");
        for s in placement.sandboxes() {
            assert!(s.used <= 64, "{s:?}");
        }
        // A passivated actor comes back with its state: its second message is its second.
        let first = actor(0, TENANTS);
        assert_eq!(
            placement.sandbox_of(&first.id),
            None,
            "actor-0 was passivated"
        );
        let again = placement.send(&first, b"again".to_vec()).await.unwrap();
        assert!(again.activated);
        assert_eq!(again.handled, 2, "the count survived passivation");
        placement.shutdown();
        pool.shutdown().await;
    });
}

#[test]
fn actors_of_a_killed_sandbox_are_lost_and_placed_again_and_the_pool_refills() {
    let dir = TempDir::new("placement-kill");
    rt().block_on(async {
        let pool = pool(&dir, "pkill", 2);
        wait_warm(&pool, 2).await;
        let placement = placement(&pool, 8, 16);
        let actors: Vec<_> = (0..4).map(|i| actor(i, 1)).collect();
        for a in &actors {
            placement.send(a, b"one".to_vec()).await.unwrap();
        }
        // Passivate them once (their state is saved: 1 message), then a second message.
        placement.passivate_idle(Duration::ZERO).await;
        assert_eq!(placement.counts(), (4, 4));
        let mut sandbox = String::new();
        for a in &actors {
            let got = placement.send(a, b"two".to_vec()).await.unwrap();
            assert_eq!(got.handled, 2);
            sandbox = got.sandbox;
        }
        let mut events = placement.subscribe();
        kill_sandbox(&dir, &sandbox);
        let mut lost = Vec::new();
        while lost.len() < 4 {
            let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("the loss is reported")
                .unwrap();
            let PlacementEvent::Lost {
                actor, sandbox: s, ..
            } = event;
            assert_eq!(s, sandbox);
            lost.push(actor.id);
        }
        lost.sort();
        assert_eq!(lost, ["actor-0", "actor-1", "actor-2", "actor-3"]);
        // Placed again on the next message, with the state of their last passivation.
        for a in &actors {
            let got = placement.send(a, b"three".to_vec()).await.unwrap();
            assert!(got.activated);
            assert_ne!(got.sandbox, sandbox);
            assert_eq!(
                got.handled, 2,
                "the second message was lost with the sandbox"
            );
        }
        wait_warm(&pool, 2).await;
        assert!(pool.list().iter().all(|s| s.id != sandbox), "refilled");
        let workspace = dir.path().join("workspaces").join(&sandbox);
        until(
            "the dead sandbox's workspace removed",
            Duration::from_secs(30),
            || !workspace.exists(),
        )
        .await;
        placement.shutdown();
        pool.shutdown().await;
    });
}

#[test]
fn activations_past_the_queue_limit_are_refused_and_exclusive_actors_get_their_own_sandbox() {
    let dir = TempDir::new("placement-queue");
    rt().block_on(async {
        let pool = pool(&dir, "pqueue", 2);
        wait_warm(&pool, 2).await;
        let placement = placement(&pool, 1, 2);
        let solo = LogicalActor {
            id: "solo".into(),
            tenant: "t".into(),
            isolation: Isolation::Exclusive,
        };
        let held_solo = placement.pin(&solo).await.unwrap();
        let shared = actor(0, 1);
        let held = placement.pin(&shared).await.unwrap();
        assert_ne!(held.sandbox, held_solo.sandbox, "exclusive means alone");
        // The activation's acknowledgement means the actor's workspace exists in its sandbox
        // (the sandbox's own memory, not the host's workspace).
        let check = "test -d /actors/actor-0 && test ! -e /workspace/actors";
        assert_eq!(sh(&held.worker, check).await, 0);
        assert_eq!(
            sh(
                &held_solo.worker,
                "test -d /actors/solo && test ! -e /actors/actor-0"
            )
            .await,
            0
        );
        // Both sandboxes are taken by pinned actors: two activations wait, the third is refused.
        let waiting: Vec<_> = (1..3)
            .map(|i| {
                let placement = placement.clone();
                tokio::spawn(async move { placement.send(&actor(i, 1), vec![]).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let refused = placement.send(&actor(3, 1), vec![]).await.err().unwrap();
        assert!(
            matches!(refused, PlacementError::QueueFull { limit: 2 }),
            "{refused}"
        );
        assert!(waiting.iter().all(|w| !w.is_finished()), "they wait");
        drop(held);
        for w in waiting {
            let got = w.await.unwrap().unwrap();
            assert_ne!(got.sandbox, held_solo.sandbox);
        }
        drop(held_solo);
        placement.shutdown();
        pool.shutdown().await;
    });
}

#[test]
fn an_idle_exclusive_actor_is_suspended_and_restored_with_its_processes_and_memory() {
    let dir = TempDir::new("placement-suspend");
    rt().block_on(async {
        let pool = pool(&dir, "psusp", 1);
        wait_warm(&pool, 1).await;
        assert_eq!(pool.cannot_suspend(), None, "the tests run as root");
        let placement = placement(&pool, 8, 8);
        let counter = LogicalActor {
            id: "counter".into(),
            tenant: "t".into(),
            isolation: Isolation::Exclusive,
        };
        let first = placement.send(&counter, b"one".to_vec()).await.unwrap();
        assert_eq!(first.handled, 1);
        // A stateful process in the actor's sandbox, counting in the sandbox's memory (/tmp).
        let pinned = placement.pin(&counter).await.unwrap();
        let started = sh(
            &pinned.worker,
            // Renamed into place, so a reader never sees the file truncated and empty.
            "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; \
             mv /tmp/count.new /tmp/count; sleep 0.1; done) >/dev/null 2>&1 &",
        )
        .await;
        assert_eq!(started, 0);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let read = |worker: WorkerClient<Channel>| async move {
            let (code, out) = sh_out(&worker, "cat /tmp/count").await;
            assert_eq!(code, 0);
            out.trim().parse::<u64>().unwrap()
        };
        let before = read(pinned.worker.clone()).await;
        assert!(before >= 2, "it counts: {before}");
        drop(pinned);

        placement.passivate_idle(Duration::ZERO).await;
        assert!(
            pool.list().iter().all(|s| s.id != first.sandbox),
            "the suspended sandbox left the pool"
        );
        assert!(dir.path().join("images").join(&first.sandbox).is_dir());
        tokio::time::sleep(Duration::from_secs(1)).await;

        let again = placement.send(&counter, b"two".to_vec()).await.unwrap();
        assert!(again.activated && again.restored, "{again:?}");
        assert_eq!(again.sandbox, first.sandbox, "the same sandbox, restored");
        assert_eq!(again.handled, 2, "the worker's memory was restored");
        let pinned = placement.pin(&counter).await.unwrap();
        let after = read(pinned.worker.clone()).await;
        assert!(
            after >= before,
            "the count went on from {before}, not from 0: {after}"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let later = read(pinned.worker.clone()).await;
        assert!(
            later > after,
            "the counter still runs: {after} then {later}"
        );
        assert!(
            !dir.path().join("images").join(&first.sandbox).exists(),
            "image removed"
        );
        drop(pinned);
        // And again: a restored sandbox suspends and restores like a new one.
        for n in 3..5 {
            placement.passivate_idle(Duration::ZERO).await;
            let back = placement.send(&counter, b"again".to_vec()).await.unwrap();
            assert!(back.restored, "{back:?}");
            assert_eq!(back.handled, n);
        }
        placement.shutdown();
        pool.shutdown().await;
    });
}

#[test]
fn a_suspended_sandbox_whose_image_cannot_be_restored_starts_afresh_on_its_workspace() {
    let dir = TempDir::new("placement-badimage");
    rt().block_on(async {
        let pool = pool(&dir, "pbad", 1);
        wait_warm(&pool, 1).await;
        let placement = placement(&pool, 8, 8);
        let notes = LogicalActor {
            id: "notes".into(),
            tenant: "t".into(),
            isolation: Isolation::Exclusive,
        };
        for n in 1..=3 {
            let got = placement.send(&notes, b"note".to_vec()).await.unwrap();
            assert_eq!(got.handled, n);
        }
        let pinned = placement.pin(&notes).await.unwrap();
        let sandbox = pinned.sandbox.clone();
        let wrote = sh(
            &pinned.worker,
            "echo kept > /workspace/notes.txt && echo lost > /tmp/scratch",
        )
        .await;
        assert_eq!(wrote, 0);
        drop(pinned);

        placement.passivate_idle(Duration::ZERO).await;
        assert_eq!(
            placement.suspended(),
            vec![(sandbox.clone(), notes.id.clone())]
        );
        let image = dir.path().join("images").join(&sandbox);
        let checkpoint = image.join("checkpoint.img");
        assert!(checkpoint.is_file(), "{}", checkpoint.display());
        // A damaged image: runsc cannot restore it.
        std::fs::write(&checkpoint, b"not a checkpoint").unwrap();

        let back = placement.send(&notes, b"note".to_vec()).await.unwrap();
        assert!(back.activated && !back.restored, "{back:?}");
        assert_eq!(back.sandbox, sandbox, "started again under its id");
        assert_eq!(back.handled, 4, "with the state it was suspended with");
        assert!(!image.exists(), "the damaged image is removed");
        let pinned = placement.pin(&notes).await.unwrap();
        let (code, out) = sh_out(
            &pinned.worker,
            "cat /workspace/notes.txt; test -e /tmp/scratch || echo fresh",
        )
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "kept\nfresh\n"),
            "its files stayed, its memory did not"
        );
        drop(pinned);
        placement.shutdown();
        pool.shutdown().await;
        let workspace = dir.path().join("workspaces").join(&sandbox);
        assert!(workspace.is_dir(), "kept for its actor past the pool");

        // A pool on the same dirs (the node restarted) has it back for the actor; removing
        // the actor removes it.
        let pool = self::pool(&dir, "pbad-again", 1);
        assert_eq!(pool.kept(), vec![(sandbox.clone(), notes.id.clone())]);
        let placement = self::placement(&pool, 8, 8);
        assert_eq!(
            placement.suspended(),
            vec![(sandbox.clone(), notes.id.clone())]
        );
        let back = placement.send(&notes, b"note".to_vec()).await.unwrap();
        assert_eq!(
            (back.sandbox.as_str(), back.restored),
            (sandbox.as_str(), false)
        );
        placement.remove(&notes.id);
        until(
            "the removed actor's workspace goes",
            Duration::from_secs(20),
            || !workspace.exists(),
        )
        .await;
        assert!(pool.kept().is_empty());
        placement.shutdown();
        pool.shutdown().await;
    });
}

/// Log lines written while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[test]
fn where_sandboxes_cannot_be_checkpointed_an_idle_exclusive_actor_is_stopped_and_started_afresh_on_its_workspace()
 {
    use tracing_subscriber::util::SubscriberInitExt;
    let dir = TempDir::new("placement-nocheckpoint");
    let logs = Logs::default();
    let _logging = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .finish()
        .set_default();
    // One thread: placement's tasks log to this thread's subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let provider = ProcessProvider::new(cadre_bin(), true).unwrap();
        let pool = pool_on(Arc::new(provider), &dir, "pnock", 1);
        wait_warm(&pool, 1).await;
        let reason = pool.cannot_suspend().expect("the process provider cannot");
        let placement = Placement::start(
            pool.clone(),
            PlacementConfig {
                slots_per_sandbox: 8,
                idle_timeout: Duration::from_millis(300),
                queue_limit: 8,
            },
        );
        let notes = LogicalActor {
            id: "notes".into(),
            tenant: "t".into(),
            isolation: Isolation::Exclusive,
        };
        let first = placement.send(&notes, b"note".to_vec()).await.unwrap();
        let sandbox = first.sandbox.clone();
        let pinned = placement.pin(&notes).await.unwrap();
        pinned
            .worker
            .clone()
            .write_file(WriteFileRequest {
                path: "notes.txt".into(),
                content: b"kept".to_vec(),
            })
            .await
            .unwrap();
        drop(pinned);

        for n in 2..4 {
            // The idle sweeper suspends it by itself: its sandbox is stopped.
            until(
                "suspended by the idle timer",
                Duration::from_secs(10),
                || !placement.suspended().is_empty(),
            )
            .await;
            assert_eq!(
                placement.suspended(),
                vec![(sandbox.clone(), notes.id.clone())]
            );
            assert!(
                pool.list().iter().all(|s| s.id != sandbox),
                "{:?}",
                pool.list()
            );
            assert!(!dir.path().join("images").join(&sandbox).exists());

            let pinned = placement.pin(&notes).await.unwrap();
            assert!(pinned.activated && !pinned.restored);
            assert_eq!(pinned.sandbox, sandbox, "started again under its id");
            let read = pinned
                .worker
                .clone()
                .read_file(ReadFileRequest {
                    path: "notes.txt".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(read.content, b"kept", "its workspace's files stayed");
            drop(pinned);
            let got = placement.send(&notes, b"note".to_vec()).await.unwrap();
            assert_eq!(got.handled, n, "with the state it was suspended with");
        }
        let logged = logs.text();
        let said = "idle exclusive actors' sandboxes are stopped instead of checkpointed";
        assert_eq!(logged.matches(said).count(), 1, "said once: {logged}");
        assert!(logged.contains(&reason), "with its reason: {logged}");

        // A shared actor's sandbox is destroyed once idle and empty, its workspace with it.
        let shared = LogicalActor {
            id: "shared".into(),
            tenant: "u".into(),
            isolation: Isolation::Shared,
        };
        let got = placement.send(&shared, b"hi".to_vec()).await.unwrap();
        let workspace = dir.path().join("workspaces").join(&got.sandbox);
        assert!(workspace.is_dir());
        until(
            "the released sandbox's workspace removed",
            Duration::from_secs(10),
            || !workspace.exists(),
        )
        .await;
        placement.shutdown();
        pool.shutdown().await;
    });
}

#[test]
fn an_exclusive_actor_whose_sandbox_dies_comes_back_on_its_workspace() {
    let dir = TempDir::new("placement-killown");
    rt().block_on(async {
        let pool = pool(&dir, "pkown", 2);
        wait_warm(&pool, 2).await;
        let placement = placement(&pool, 8, 8);
        let own = LogicalActor {
            id: "own".into(),
            tenant: "t".into(),
            isolation: Isolation::Exclusive,
        };
        for n in 1..=2 {
            let got = placement.send(&own, b"one".to_vec()).await.unwrap();
            assert_eq!(got.handled, n);
        }
        // Suspended once (its state is copied: 2 messages), restored, one more message.
        placement.passivate_idle(Duration::ZERO).await;
        let got = placement.send(&own, b"two".to_vec()).await.unwrap();
        assert!(got.restored && got.handled == 3, "{got:?}");
        let sandbox = got.sandbox;
        let pinned = placement.pin(&own).await.unwrap();
        assert_eq!(
            sh(&pinned.worker, "echo kept > /workspace/notes.txt").await,
            0
        );
        drop(pinned);

        let mut events = placement.subscribe();
        kill_sandbox(&dir, &sandbox);
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("the loss is reported")
            .unwrap();
        let PlacementEvent::Lost { actor, .. } = event;
        assert_eq!(actor.id, own.id);

        let back = placement.send(&own, b"three".to_vec()).await.unwrap();
        assert!(back.activated && !back.restored, "{back:?}");
        assert_eq!(back.sandbox, sandbox, "started again under its id");
        assert_eq!(
            back.handled, 3,
            "the state it was suspended with; the third message was lost"
        );
        let pinned = placement.pin(&own).await.unwrap();
        let (code, out) = sh_out(&pinned.worker, "cat /workspace/notes.txt").await;
        assert_eq!((code, out.as_str()), (0, "kept\n"), "its files stayed");
        drop(pinned);
        placement.shutdown();
        pool.shutdown().await;
    });
}
