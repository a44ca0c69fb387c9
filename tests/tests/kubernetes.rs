//! The `kubernetes` sandbox provider against a real API server (etcd + kube-apiserver built by
//! `scripts/setup-kube.sh`), with the node's RBAC from `deploy/base` and a stand-in kubelet
//! that runs each worker pod's `cadre worker` under gVisor on its own loopback address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cadre_actors::placement::{Isolation, LogicalActor, PlacementConfig};
use cadre_proto::v1::{ReadFileRequest, WriteFileRequest};
use cadre_sandbox::kubernetes::{LABEL_SANDBOX, LABEL_TENANT};
use cadre_sandbox::{
    KubernetesProvider, Placement, PlacementEvent, PodOwner, PoolConfig, SandboxProvider,
    Suspended, WarmPool,
};
use cadre_tests::kube::{ApiServer, NAMESPACE, StandinKubelet, WORKERS};
use cadre_tests::{Node, TempDir, cli_with_server};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn owner() -> PodOwner {
    PodOwner {
        cluster: "test".into(),
        node: "cadre-0".into(),
        pod: Some("cadre-0".into()),
    }
}

fn pool(provider: Arc<dyn SandboxProvider>, dir: &TempDir, min: usize, max: usize) -> WarmPool {
    WarmPool::start(
        provider,
        PoolConfig {
            min,
            max,
            workspaces: dir.path().join("workspaces"),
            images: dir.path().join("images"),
            owners: dir.path().join("owners"),
            memory_bytes: Some(256 << 20),
            cpus: Some(1.0),
            pids: Some(512),
            workspace_quota: None,
            min_free_disk: 0,
            name: "sbx".into(),
        },
    )
}

/// Polls until `done` holds; fails saying `what` did not happen within `limit`.
async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A server with the base RBAC applied, the node's pod, and a stand-in kubelet.
fn cluster() -> (ApiServer, StandinKubelet) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = ApiServer::start();
    server.apply_base(None);
    server.create_node_pod("cadre-0");
    let kubelet = StandinKubelet::start(&server);
    (server, kubelet)
}

#[test]
fn worker_pods_fill_the_pool_host_actors_and_are_replaced_when_evicted() {
    let (server, kubelet) = cluster();
    let dir = TempDir::new("k8s-pool");
    rt().block_on(async {
        let provider = KubernetesProvider::new(server.provider_config(), owner(), None)
            .await
            .expect("the base Role is enough to start the provider");
        let pool = pool(Arc::new(provider), &dir, 2, 4);
        // The warm pool fills to `min` ready pods, owned by the node's pod.
        until("two warm worker pods", Duration::from_secs(90), || {
            pool.list().len() == 2
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: pods {:?}, {:?}",
                server.worker_pods(),
                kubelet.stats()
            )
        });
        let pods = server.worker_pods();
        assert_eq!(pods.len(), 2, "{pods:?}");
        assert!(pods.iter().all(|(_, phase)| phase == "Running"), "{pods:?}");
        let owners = server.get_pods(
            WORKERS,
            "jsonpath={.items[*].metadata.ownerReferences[0].name}",
        );
        assert_eq!(owners.trim(), "cadre-0 cadre-0");

        // Actors are placed in them and run there.
        let placement = Placement::start(
            pool.clone(),
            PlacementConfig {
                slots_per_sandbox: 8,
                idle_timeout: Duration::from_secs(600),
                queue_limit: 1000,
            },
        );
        let mut lost = placement.subscribe();
        let actor = |i: usize| LogicalActor {
            id: format!("actor-{i}"),
            tenant: "acme".into(),
            isolation: Isolation::Shared,
        };
        for i in 0..4 {
            let delivered = placement.send(&actor(i), b"hello".to_vec()).await.unwrap();
            assert_eq!(delivered.handled, 1);
        }
        let sandbox = placement.sandbox_of("actor-0").expect("actor-0 is placed");
        // A warm pod handed to a tenant is labelled with it (by a patch in the background).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pod = server.get_pods(
            &format!("{LABEL_SANDBOX}={sandbox}"),
            "jsonpath={.items[0].metadata.name} {.items[0].metadata.labels}",
        );
        assert!(
            pod.contains(&format!("\"{LABEL_TENANT}\":\"acme\"")),
            "{pod}"
        );
        let pod_name = pod.split(' ').next().unwrap().to_string();

        // Deleting the pod (as an eviction would) loses its actors, which are placed again,
        // and the pool fills up again.
        server
            .kubectl(&["delete", "pod", "-n", NAMESPACE, &pod_name, "--wait=false"])
            .unwrap();
        let event = tokio::time::timeout(Duration::from_secs(30), lost.recv())
            .await
            .expect("the lost actors are reported")
            .unwrap();
        let PlacementEvent::Lost {
            sandbox: gone,
            reason,
            ..
        } = event;
        assert_eq!(gone, sandbox);
        assert!(reason.contains("deleted"), "{reason}");
        let again = placement.send(&actor(0), b"again".to_vec()).await.unwrap();
        assert_eq!(again.handled, 1, "placed again, from a fresh activation");
        assert_ne!(
            placement.sandbox_of("actor-0").as_deref(),
            Some(sandbox.as_str())
        );
        until("the pool refilled", Duration::from_secs(90), || {
            pool.list().iter().filter(|s| s.tenant.is_none()).count() >= 1
                && server.worker_pods().iter().all(|(_, p)| p == "Running")
        })
        .await
        .unwrap();
        placement.shutdown();
        pool.shutdown().await;
    });
    // Every pod the pool made is gone with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.worker_pods().is_empty() {
        assert!(Instant::now() < deadline, "{:?}", server.worker_pods());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(kubelet.stats().started >= 3, "{:?}", kubelet.stats());
}

#[test]
fn a_suspended_worker_pod_is_deleted_and_restored_with_its_workspace() {
    let (server, _kubelet) = cluster();
    let dir = TempDir::new("k8s-suspend");
    rt().block_on(async {
        let provider = KubernetesProvider::new(server.provider_config(), owner(), None)
            .await
            .unwrap();
        assert!(provider.cannot_checkpoint().is_some());
        let pool = pool(Arc::new(provider), &dir, 0, 2);
        let lease = pool.acquire("acme").await.unwrap();
        let mut worker = lease.worker.clone();
        worker
            .write_file(WriteFileRequest {
                path: "notes/plan.txt".into(),
                content: b"kept across suspension".to_vec(),
            })
            .await
            .unwrap();
        let suspended = pool.suspend(&lease.id).await.unwrap();
        assert!(
            matches!(suspended, Suspended::Stopped { .. }),
            "{suspended:?}"
        );
        pool.removed(&lease.id).await;
        // The pod is gone; its workspace is on the node.
        assert!(
            server.worker_pods().is_empty(),
            "{:?}",
            server.worker_pods()
        );
        let copied = dir
            .path()
            .join("workspaces")
            .join(&lease.id)
            .join("notes/plan.txt");
        assert_eq!(
            std::fs::read(&copied).unwrap_or_default(),
            b"kept across suspension"
        );
        // A resume starts a new pod and puts the workspace back.
        let resumed = pool.resume(&lease.id, "acme").await.unwrap();
        assert!(!resumed.restored, "no checkpoint on stock Kubernetes");
        let read = resumed
            .lease
            .worker
            .clone()
            .read_file(ReadFileRequest {
                path: "notes/plan.txt".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.content, b"kept across suspension");
        assert_eq!(server.worker_pods().len(), 1);
        pool.shutdown().await;
    });
}

#[test]
fn a_role_without_a_verb_the_node_needs_fails_naming_the_verb() {
    let server = ApiServer::start();
    // The base Role without `create`.
    server.apply_base(Some(
        "rules:\n- apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: [\"delete\", \"get\", \
         \"list\", \"watch\", \"patch\"]\n",
    ));
    server.create_node_pod("cadre-0");
    let dir = TempDir::new("k8s-rbac");
    rt().block_on(async {
        let provider = KubernetesProvider::new(server.provider_config(), owner(), None)
            .await
            .unwrap();
        let pool = pool(Arc::new(provider), &dir, 0, 1);
        let refused = pool.acquire("acme").await.err().expect("create is refused");
        let message = refused.to_string();
        assert!(message.contains("needs verb `create`"), "{message}");
        assert!(message.contains("forbidden"), "{message}");
        pool.shutdown().await;
    });
    // And without `list`, the provider cannot start at all.
    server.apply_base(Some(
        "rules:\n- apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: [\"create\", \"delete\", \
         \"get\", \"watch\", \"patch\"]\n",
    ));
    let refused = rt()
        .block_on(KubernetesProvider::new(
            server.provider_config(),
            owner(),
            None,
        ))
        .err()
        .expect("list is refused");
    assert!(
        refused.to_string().contains("needs verb `list`"),
        "{refused}"
    );
}

/// `examples/cadre.yaml` with worker pods as its sandboxes, in `dir` (its skills linked).
fn example_config(server: &ApiServer, dir: &TempDir) -> std::path::PathBuf {
    let root = cadre_tests::kube::repo_root();
    let example = std::fs::read_to_string(root.join("examples/cadre.yaml")).unwrap();
    let example = example.replace("listen: 127.0.0.1:7400", "listen: 127.0.0.1:0");
    std::os::unix::fs::symlink(root.join("examples/skills"), dir.path().join("skills")).unwrap();
    let certs = &server.certs;
    let config = format!(
        "{example}\nsandbox:\n  provider: kubernetes\n  warm_pool: {{ min: 1, max: 4 }}\n  \
         kubernetes:\n    image: cadre:test\n    namespace: {NAMESPACE}\n    kubeconfig: {}\n    \
         tls: {{ cert_file: {}, key_file: {}, ca_file: {} }}\n",
        server.node.display(),
        certs.join("client.crt").display(),
        certs.join("client.key").display(),
        certs.join("ca.crt").display(),
    );
    let path = dir.path().join("cadre.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn cadre_serve_runs_the_example_mcp_server_in_a_worker_pod_and_adopts_kept_pods_on_restart() {
    let (server, _kubelet) = cluster();
    let dir = TempDir::new("k8s-serve");
    let config = example_config(&server, &dir);
    let data = dir.path().join("data");
    let env = [("POD_NAME", "cadre-0")];
    let node = Node::start_from_file_with_env(&config, &data, &env);
    // The MCP server of examples/cadre.yaml runs in a worker pod; its tools answer.
    let deadline = Instant::now() + Duration::from_secs(120);
    let echoed = loop {
        let out = cli_with_server(
            &node.addr,
            &[
                "tools",
                "call",
                "everything.echo",
                "--args",
                r#"{"message":"through a pod"}"#,
            ],
        );
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "tools call: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(echoed.contains("through a pod"), "{echoed}");
    let sandboxes = cli_with_server(&node.addr, &["sandboxes", "ls", "-o", "json"]);
    let listing = String::from_utf8_lossy(&sandboxes.stdout);
    assert!(listing.contains("kubernetes"), "{listing}");

    // A conversation's workspace is a kept sandbox: its pod outlives a SIGKILLed node and is
    // adopted by the next run, files and all; the others are deleted.
    let exec = node.exec("notes", "conv-k8s", "hello pod");
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let uids = |server: &ApiServer| -> Vec<String> {
        let out = server.get_pods(
            WORKERS,
            "jsonpath={range .items[*]}{.metadata.uid}{\"\\n\"}{end}",
        );
        out.lines().map(str::to_string).collect()
    };
    let owners = std::fs::read_dir(data.join("sandboxes/owners"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert_eq!(owners.len(), 1, "one kept sandbox: {owners:?}");
    let kept_pod = server.get_pods(
        &format!("{LABEL_SANDBOX}={}", owners[0]),
        "jsonpath={.items[0].metadata.uid}",
    );
    assert!(!kept_pod.is_empty());
    let before = uids(&server);
    let mut node = node;
    node.stop(libc::SIGKILL);
    let node = Node::start_from_file_with_env(&config, &data, &env);
    let exec = node.exec("notes", "conv-k8s", "again");
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    // The workspace holds the first exec's note too: the adopted pod's files.
    let output = String::from_utf8_lossy(&exec.stdout);
    assert_eq!(output.matches("note-").count(), 2, "{output}");
    let after = uids(&server);
    assert!(
        after.contains(&kept_pod),
        "the kept pod was adopted: {before:?} → {after:?}"
    );
    assert!(
        before
            .iter()
            .filter(|u| **u != kept_pod)
            .all(|u| !after.contains(u)),
        "the rest were deleted: {before:?} → {after:?}"
    );
    drop(node);
}
