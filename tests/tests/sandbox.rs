//! Sandboxes with real `runsc` (gVisor): the worker protocol inside a sandbox, and isolation —
//! the host's files, the network, other tenants' workspaces, the memory limit.

use std::sync::Arc;
use std::time::Duration;

use cadre_proto::v1::worker_client::WorkerClient;
use cadre_proto::v1::{
    ActivateRequest, ActorActivation, DeliverRequest, ListFilesRequest, PassivateRequest,
    ProcessExit, ProcessStart, ReadFileRequest, RunInput, WorkerStatsRequest, WriteFileRequest,
    activation_result, run_input, run_output,
};
use cadre_sandbox::{
    GvisorProvider, PoolConfig, PoolError, ProcessProvider, Sandbox, SandboxInfo, SandboxProvider,
    SandboxSpec, WarmPool,
};
use cadre_tests::{TempDir, cadre_bin};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn gvisor(dir: &TempDir) -> GvisorProvider {
    GvisorProvider::new(dir.path().join("state"), cadre_bin())
        .expect("runsc is installed by scripts/setup.sh")
}

fn spec(dir: &TempDir, id: &str, tenant: &str) -> SandboxSpec {
    SandboxSpec {
        id: format!("{id}-{}", std::process::id()),
        tenant: tenant.into(),
        workspace: dir.path().join(format!("ws-{id}")),
        egress: false,
        memory_bytes: Some(256 << 20),
        cpus: Some(1.0),
        pids: Some(512),
        workspace_quota: None,
    }
}

#[derive(Debug)]
struct Ran {
    exit: ProcessExit,
    stdout: String,
    stderr: String,
}

/// Runs a command in the sandbox to its end.
async fn run(worker: &mut WorkerClient<Channel>, argv: &[&str]) -> Result<Ran, tonic::Status> {
    let start = RunInput {
        input: Some(run_input::Input::Start(ProcessStart {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
    };
    let mut outputs = worker
        .run(tokio_stream::iter(vec![start]))
        .await?
        .into_inner();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(out) = outputs.message().await? {
        match out.output {
            Some(run_output::Output::Stdout(b)) => stdout.extend(b),
            Some(run_output::Output::Stderr(b)) => stderr.extend(b),
            Some(run_output::Output::Exit(exit)) => {
                return Ok(Ran {
                    exit,
                    stdout: String::from_utf8_lossy(&stdout).into(),
                    stderr: String::from_utf8_lossy(&stderr).into(),
                });
            }
            Some(run_output::Output::Pid(_)) | None => {}
        }
    }
    Err(tonic::Status::unavailable("the run ended without an exit"))
}

async fn sh(sandbox: &Sandbox, script: &str) -> Ran {
    run(&mut sandbox.worker(), &["/bin/sh", "-c", script])
        .await
        .unwrap()
}

#[test]
fn a_sandbox_sees_its_workspace_and_nothing_else_of_the_host() {
    let dir = TempDir::new("sandbox-view");
    let secret = dir.path().join("host-secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let provider = gvisor(&dir);
    assert!(provider.isolated());
    rt().block_on(async {
        let a = provider
            .start(spec(&dir, "view-a", "tenant-a"))
            .await
            .unwrap();
        let b = provider
            .start(spec(&dir, "view-b", "tenant-b"))
            .await
            .unwrap();
        let mut wa = a.worker();

        // The worker protocol: files in and out, processes, stats.
        wa.write_file(WriteFileRequest {
            path: "notes/a.txt".into(),
            content: b"tenant a's data".to_vec(),
        })
        .await
        .unwrap();
        let listed = wa
            .list_files(ListFilesRequest {
                path: "notes".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.entries[0].name, "a.txt");
        let ran = sh(&a, "cat notes/a.txt; echo; echo err >&2; exit 3").await;
        assert_eq!(ran.exit.code, 3);
        assert_eq!(ran.stdout, "tenant a's data\n");
        assert_eq!(ran.stderr, "err\n");
        let made = sh(&a, "echo made inside > out.txt").await;
        assert_eq!(made.exit.code, 0, "{}", made.stderr);
        let back = wa
            .read_file(ReadFileRequest {
                path: "out.txt".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(back.content, b"made inside\n");
        assert_eq!(
            std::fs::read_to_string(a.spec.workspace.join("out.txt")).unwrap(),
            "made inside\n",
            "the workspace is the host directory"
        );
        let stats = wa.stats(WorkerStatsRequest {}).await.unwrap().into_inner();
        assert!(stats.memory_used_bytes > 0, "{stats:?}");
        for path in ["../escape", "/etc/passwd"] {
            let refused = wa
                .read_file(ReadFileRequest { path: path.into() })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        }
        let bad = run(&mut wa, &["/no/such/program"]).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

        // The host's files outside the view are not there.
        let host = sh(&a, &format!("cat {}", secret.display())).await;
        assert_ne!(host.exit.code, 0);
        assert!(!host.stdout.contains("top secret"));
        let home = sh(&a, "ls /root /work /etc 2>&1; cat /etc/shadow").await;
        assert_ne!(home.exit.code, 0, "{}", home.stdout);
        // The kernel is gVisor's, not the host's.
        let kernel = sh(&a, "cat /proc/version").await;
        let host_kernel = std::fs::read_to_string("/proc/version").unwrap();
        assert_ne!(kernel.stdout, host_kernel);
        // The system directories are read-only.
        let write = sh(&a, "echo x > /usr/cadre-was-here").await;
        assert_ne!(write.exit.code, 0);
        assert!(!std::path::Path::new("/usr/cadre-was-here").exists());

        // Tenant b sees neither a's workspace nor its files.
        let other = sh(
            &b,
            &format!(
                "cat notes/a.txt; cat {}/notes/a.txt",
                a.spec.workspace.display()
            ),
        )
        .await;
        assert_ne!(other.exit.code, 0);
        assert!(!other.stdout.contains("tenant a"), "{}", other.stdout);
        let listed = sh(&b, "ls -A /workspace").await;
        assert_eq!(listed.exit.code, 0, "{}", listed.stderr);
        assert!(!listed.stdout.contains("notes"), "{}", listed.stdout);
        a.kill().await;
        b.kill().await;
    });
}

#[test]
fn one_activate_call_activates_many_actors_each_on_its_own() {
    let dir = TempDir::new("sandbox-activate");
    let provider = gvisor(&dir);
    rt().block_on(async {
        let sandbox = provider
            .start(spec(&dir, "activate", "tenant-a"))
            .await
            .unwrap();
        let mut worker = sandbox.worker();
        let actor = |id: &str, state: &[u8]| ActorActivation {
            actor_id: id.into(),
            state: state.to_vec(),
        };
        let results = worker
            .activate(ActivateRequest {
                actors: vec![
                    actor("counter", &5u64.to_le_bytes()),
                    actor("counter", &[]),
                    actor("../escape", &[]),
                    actor("short-state", &[1, 2, 3]),
                    actor("fresh", &[]),
                ],
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        let outcome: Vec<Result<String, (Code, String)>> = results
            .into_iter()
            .map(|r| match r.result.unwrap() {
                activation_result::Result::Workspace(w) => Ok(w),
                activation_result::Result::Error(e) => Err((Code::from(e.code), e.message)),
            })
            .collect();
        assert_eq!(outcome.len(), 5, "{outcome:?}");
        assert_eq!(outcome[0], Ok("/actors/counter".to_string()));
        assert!(matches!(&outcome[1], Err((Code::AlreadyExists, m)) if m.contains("counter")));
        assert!(matches!(&outcome[2], Err((Code::InvalidArgument, m)) if m.contains("../escape")));
        assert!(matches!(&outcome[3], Err((Code::InvalidArgument, m)) if m.contains("3 bytes")));
        assert_eq!(outcome[4], Ok("/actors/fresh".to_string()));

        // The failed ones are not active; the others have their workspace and state.
        let ran = sh(
            &sandbox,
            "test -d /actors/counter && test -d /actors/fresh && test ! -e /actors/short-state",
        )
        .await;
        assert_eq!(ran.exit.code, 0, "{ran:?}");
        let delivered = worker
            .deliver(DeliverRequest {
                actor_id: "counter".into(),
                payload: b"hi".to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(delivered.handled, 6);
        let refused = worker
            .deliver(DeliverRequest {
                actor_id: "short-state".into(),
                payload: Vec::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        // A copy of the state (asked before a suspension) leaves the actor as it was.
        let copy = worker
            .passivate(PassivateRequest {
                actor_id: "counter".into(),
                keep_active: true,
            })
            .await
            .unwrap()
            .into_inner()
            .state;
        assert_eq!(copy, 6u64.to_le_bytes());
        let still = sh(&sandbox, "test -d /actors/counter").await;
        assert_eq!(still.exit.code, 0, "its workspace stays: {still:?}");
        let state = worker
            .passivate(PassivateRequest {
                actor_id: "counter".into(),
                keep_active: false,
            })
            .await
            .unwrap()
            .into_inner()
            .state;
        assert_eq!(state, 6u64.to_le_bytes());
        let gone = worker
            .passivate(PassivateRequest {
                actor_id: "counter".into(),
                keep_active: true,
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
        sandbox.kill().await;
    });
}

#[test]
fn no_network_unless_egress_is_allowed() {
    let dir = TempDir::new("sandbox-net");
    let provider = gvisor(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");
    rt().block_on(async {
        let closed = provider.start(spec(&dir, "net-off", "t")).await.unwrap();
        let refused = run(&mut closed.worker(), &["/bin/bash", "-c", &connect])
            .await
            .unwrap();
        assert_ne!(refused.exit.code, 0, "{}", refused.stdout);
        assert!(
            listener.accept().is_err(),
            "nothing reached the host listener"
        );
        let outside = run(
            &mut closed.worker(),
            &["/bin/bash", "-c", "exec 3<>/dev/tcp/1.1.1.1/53"],
        )
        .await
        .unwrap();
        assert_ne!(outside.exit.code, 0);
        closed.kill().await;

        let open = provider
            .start(SandboxSpec {
                egress: true,
                ..spec(&dir, "net-on", "t")
            })
            .await
            .unwrap();
        let ok = run(&mut open.worker(), &["/bin/bash", "-c", &connect])
            .await
            .unwrap();
        assert_eq!(ok.exit.code, 0, "{}", ok.stderr);
        assert_eq!(ok.stdout, "connected\n");
        open.kill().await;
    });
}

#[test]
fn the_memory_limit_kills_the_sandbox_not_the_node() {
    let dir = TempDir::new("sandbox-mem");
    let provider = gvisor(&dir);
    rt().block_on(async {
        let mut small = provider
            .start(SandboxSpec {
                memory_bytes: Some(48 << 20),
                ..spec(&dir, "mem-small", "t")
            })
            .await
            .unwrap();
        // `tail -c N` keeps the last N bytes in memory: 100 MB.
        let hog = "head -c 100000000 /dev/zero | tail -c 100000000 | wc -c | sed 's/^/survived /'";
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            run(&mut small.worker(), &["/bin/sh", "-c", hog]),
        )
        .await
        .expect("the hog ends one way or another");
        match outcome {
            // Inside gVisor the hog itself was killed.
            Ok(ran) => {
                eprintln!("the hog was killed inside the sandbox: {ran:?}");
                assert_ne!(ran.stdout, "survived 100000000\n", "{ran:?}");
            }
            // The whole sandbox was killed: its worker connection broke.
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::Unknown | Code::Unavailable),
                    "{status:?}"
                );
                let ended = tokio::time::timeout(Duration::from_secs(10), small.ended())
                    .await
                    .expect("the killed sandbox ends");
                assert!(!ended.success, "{ended:?}");
            }
        }
        small.kill().await;

        // The node goes on, and a sandbox with room runs the same thing.
        let big = provider
            .start(SandboxSpec {
                memory_bytes: Some(2 << 30),
                ..spec(&dir, "mem-big", "t")
            })
            .await
            .unwrap();
        let ran = sh(&big, hog).await;
        assert_eq!(ran.stdout, "survived 100000000\n");
        big.kill().await;
    });
}

#[test]
fn the_process_provider_is_refused_unless_allowed_and_then_isolates_nothing() {
    let refused = ProcessProvider::new(cadre_bin(), false)
        .err()
        .expect("refused by default");
    assert!(
        refused.to_string().contains("allow_unsandboxed"),
        "{refused}"
    );
    let dir = TempDir::new("sandbox-process");
    let provider = ProcessProvider::new(cadre_bin(), true).unwrap();
    assert!(!provider.isolated());
    rt().block_on(async {
        let s = provider.start(spec(&dir, "plain", "t")).await.unwrap();
        let ran = sh(&s, "echo hi > f.txt && cat f.txt").await;
        assert_eq!(ran.stdout, "hi\n");
        assert!(s.spec.workspace.join("f.txt").exists());
        s.kill().await;
    });
}

/// Polls the pool until `done` holds.
async fn wait_for(pool: &WarmPool, what: &str, done: impl Fn(&[SandboxInfo]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = pool.list();
        if done(&list) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {list:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn warm(list: &[SandboxInfo]) -> usize {
    list.iter().filter(|s| s.tenant.is_none()).count()
}

#[test]
fn the_warm_pool_leases_per_tenant_and_refills_when_a_sandbox_dies() {
    let dir = TempDir::new("sandbox-pool");
    let state = dir.path().join("state");
    let provider = Arc::new(gvisor(&dir));
    rt().block_on(async {
        let pool = WarmPool::start(
            provider,
            PoolConfig {
                min: 2,
                max: 3,
                workspaces: dir.path().join("workspaces"),
                images: dir.path().join("images"),
                owners: dir.path().join("owners"),
                memory_bytes: Some(256 << 20),
                cpus: Some(1.0),
                pids: Some(512),
                workspace_quota: None,
                min_free_disk: 0,
                name: format!("pool-{}", std::process::id()),
            },
        );
        wait_for(&pool, "two warm sandboxes", |l| {
            l.len() == 2 && warm(l) == 2
        })
        .await;
        let a = pool.acquire("tenant-a").await.unwrap();
        let echoed = run(&mut a.worker.clone(), &["/bin/echo", "from a"])
            .await
            .unwrap();
        assert_eq!(echoed.stdout, "from a\n");
        wait_for(&pool, "refilled to two warm", |l| {
            l.len() == 3 && warm(l) == 2
        })
        .await;
        let b = pool.acquire("tenant-b").await.unwrap();
        let c = pool.acquire("tenant-c").await.unwrap();
        let full = pool.acquire("tenant-d").await.err().expect("at max");
        assert!(matches!(full, PoolError::Exhausted { max: 3 }), "{full}");
        let ids: std::collections::HashSet<_> = [&a.id, &b.id, &c.id].into_iter().collect();
        assert_eq!(ids.len(), 3, "one sandbox per tenant");

        // Kill a's sandbox (gVisor's sandbox process, holding its kernel).
        let mut died = pool.subscribe();
        let out = std::process::Command::new("runsc")
            .arg("--root")
            .arg(state.join("runsc"))
            .args(["state", &a.id])
            .output()
            .unwrap();
        let sandbox: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let pid = sandbox["pid"].as_i64().expect("runsc state has a pid");
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let death = tokio::time::timeout(Duration::from_secs(30), died.recv())
            .await
            .expect("the death is reported")
            .unwrap();
        assert_eq!(
            (death.id.as_str(), death.tenant.as_deref()),
            (a.id.as_str(), Some("tenant-a"))
        );
        assert!(
            run(&mut a.worker.clone(), &["/bin/true"]).await.is_err(),
            "its worker is gone"
        );
        wait_for(&pool, "a replacement", |l| {
            l.len() == 3 && warm(l) == 1 && l.iter().all(|s| s.id != a.id)
        })
        .await;

        // A released sandbox is destroyed, never handed to another tenant.
        pool.release(&b.id);
        wait_for(&pool, "refilled after a release", |l| {
            l.len() == 3 && warm(l) == 2 && l.iter().all(|s| s.id != b.id)
        })
        .await;
        let d = pool.acquire("tenant-d").await.unwrap();
        assert!(d.id != b.id && d.id != c.id);
        pool.shutdown().await;
        wait_for(&pool, "shut down", |l| l.is_empty()).await;
    });
}

fn sandboxes(node: &cadre_tests::Node) -> Vec<serde_json::Value> {
    node.json_lines(&["sandboxes", "ls", "-o", "json"])
}

#[test]
fn a_node_keeps_its_warm_pool_and_removes_it_when_it_stops() {
    let mut node = cadre_tests::Node::start(
        "version: v1\nsandbox:\n  provider: gvisor\n  warm_pool: { min: 2, max: 4 }\n  memory_mib: 256\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let list = loop {
        let list = sandboxes(&node);
        if list.len() == 2 {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "{list:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for s in &list {
        assert_eq!(s["state"], "warm");
        assert_eq!(s["provider"], "gvisor");
        assert_eq!(s["isolated"], true);
        assert!(cadre_tests::alive(s["pid"].as_u64().unwrap() as u32));
        // Placement runs on the pool; nothing is placed in a warm sandbox.
        assert_eq!((&s["slots"], &s["actors"]), (&json!(0), &json!([])));
    }
    let placed = rt().block_on(async {
        cadre_proto::v1::cluster_client::ClusterClient::connect(format!("http://{}", node.addr))
            .await
            .unwrap()
            .placement(cadre_proto::v1::PlacementRequest { all: true })
            .await
            .unwrap()
            .into_inner()
    });
    assert!(placed.actors.is_empty(), "{placed:?}");
    let table = node.cli(&["sandboxes", "ls"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("provider gvisor (isolated); warm pool min 2 max 4\nSANDBOX"),
        "{text}"
    );
    let data = node.dir.path().join("data");
    node.stop(libc::SIGTERM);
    for s in &list {
        assert!(
            !cadre_tests::alive(s["pid"].as_u64().unwrap() as u32),
            "stopped with the node"
        );
    }
    let left = std::process::Command::new("runsc")
        .arg("--root")
        .arg(data.join("sandboxes/runsc"))
        .args(["list", "-quiet"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "no runsc sandbox left"
    );
}

#[test]
fn a_node_on_the_process_provider_says_nothing_is_isolated() {
    let node = cadre_tests::Node::start(&format!(
        "version: v1\nsandbox: {{ provider: process, allow_unsandboxed: true, warm_pool: {{ min: 1, max: 2 }} }}\n\
         supervisor:\n  children:\n    - id: everything\n      mcp: {{ command: {} }}\n",
        cadre_tests::everything_command()
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sandboxes(&node).is_empty() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = node.cli(&["sandboxes", "ls"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("NOT ISOLATED"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
    // The tree says so too once an actor is placed; the MCP server runs (on the host).
    node.wait_tree("the mcp server", Duration::from_secs(60), |t| {
        cadre_tests::find(t, "root/everything")["status"] == "running"
    });
    let tree = node.cli(&["tree"]);
    let tree = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.starts_with("NOT ISOLATED: sandbox provider `process`"),
        "{tree}"
    );
    let echoed = node.cli(&[
        "tools",
        "call",
        "everything.echo",
        "--args",
        r#"{"message":"on the host"}"#,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&echoed.stdout).trim(),
        "Echo: on the host"
    );
    let defaults = cadre_tests::Node::start("version: v1\n");
    assert!(sandboxes(&defaults).is_empty(), "no sandbox section: min 0");
}
