//! Activations on worker pods (the `kubernetes` provider against a real API server, pods run by
//! the stand-in kubelet under gVisor) against activations on local gVisor sandboxes, same run;
//! and each pod's time from creation to ready, as the stand-in reports it. Prints one JSON
//! object. `cargo bench -p cadre-tests --bench kubernetes` (needs runsc, root, and the API
//! server of scripts/setup-kube.sh).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cadre_actors::config::KubernetesSandbox;
use cadre_actors::placement::{Isolation, LogicalActor, PlacementConfig};
use cadre_sandbox::{
    GvisorProvider, KubernetesProvider, Placement, PodOwner, PoolConfig, SandboxProvider, WarmPool,
};
use cadre_tests::kube::{ApiServer, StandinKubelet};
use cadre_tests::{TempDir, cadre_bin};
use serde_json::json;

const SANDBOXES: usize = 4;
const ACTORS: usize = 2000;
const IN_FLIGHT: usize = 64;
const ROUNDS: usize = 3;

fn main() {
    let server = ApiServer::start();
    server.apply_base(None);
    server.create_node_pod("cadre-0");
    let kubelet = StandinKubelet::start(&server);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new("bench-k8s");
    let mut figures = serde_json::Map::new();
    for round in 0..ROUNDS {
        for kind in ["kubernetes", "gvisor"] {
            let provider: Arc<dyn SandboxProvider> = match kind {
                "kubernetes" => Arc::new(
                    rt.block_on(KubernetesProvider::new(
                        KubernetesSandbox {
                            image: "cadre:bench".into(),
                            ..server.provider_config()
                        },
                        PodOwner {
                            cluster: "bench".into(),
                            node: "cadre-0".into(),
                            pod: Some("cadre-0".into()),
                        },
                        None,
                    ))
                    .unwrap(),
                ),
                _ => Arc::new(
                    GvisorProvider::new(dir.path().join(format!("state-{round}")), cadre_bin())
                        .unwrap(),
                ),
            };
            let measured = rt.block_on(activations(provider, &dir, &format!("{kind}-{round}")));
            eprintln!("bench kubernetes: round {round} {kind}: {measured}");
            figures
                .entry(kind)
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .unwrap()
                .push(measured);
        }
    }
    let mut ready: Vec<Duration> = kubelet.stats().ready_after;
    ready.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = |kind: &str, key: &str| {
        let mut values: Vec<f64> = figures[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[key].as_f64().unwrap())
            .collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let summary = json!({
        "actors": ACTORS, "sandboxes": SANDBOXES, "in_flight": IN_FLIGHT, "rounds": ROUNDS,
        "kubernetes": {
            "activations_per_sec": median("kubernetes", "activations_per_sec"),
            "p50_ms": median("kubernetes", "p50_ms"),
            "p99_ms": median("kubernetes", "p99_ms"),
        },
        "gvisor": {
            "activations_per_sec": median("gvisor", "activations_per_sec"),
            "p50_ms": median("gvisor", "p50_ms"),
            "p99_ms": median("gvisor", "p99_ms"),
        },
        "pod_create_to_ready_ms": {
            "pods": ready.len(),
            "p50": ms(ready[ready.len() / 2]),
            "p99": ms(ready[(ready.len() * 99 / 100).min(ready.len() - 1)]),
        },
        "rounds_detail": figures,
    });
    println!("{summary}");
}

/// `ACTORS` activations over a pool of `SANDBOXES` sandboxes (one tenant each), `IN_FLIGHT`
/// at a time, after every sandbox is warm.
async fn activations(
    provider: Arc<dyn SandboxProvider>,
    dir: &TempDir,
    name: &str,
) -> serde_json::Value {
    let pool = WarmPool::start(
        provider,
        PoolConfig {
            min: 0,
            max: SANDBOXES,
            workspaces: dir.path().join(name).join("workspaces"),
            images: dir.path().join(name).join("images"),
            owners: dir.path().join(name).join("owners"),
            memory_bytes: Some(512 << 20),
            cpus: Some(1.0),
            pids: Some(512),
            workspace_quota: None,
            min_free_disk: 0,
            name: name.to_string(),
        },
    );
    let placement = Placement::start(
        pool.clone(),
        PlacementConfig {
            slots_per_sandbox: ACTORS / SANDBOXES + 1,
            idle_timeout: Duration::from_secs(3600),
            queue_limit: ACTORS,
        },
    );
    let actor = |i: usize| LogicalActor {
        id: format!("actor-{i}"),
        tenant: format!("tenant-{}", i % SANDBOXES),
        isolation: Isolation::Shared,
    };
    // Each tenant's sandbox is started (and gVisor's clock calibrated) before timing.
    for t in 0..SANDBOXES {
        placement
            .send(&actor(ACTORS + t), Vec::new())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    for i in 0..ACTORS {
        let (placement, gate) = (placement.clone(), gate.clone());
        let actor = actor(i);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let at = Instant::now();
            placement.send(&actor, Vec::new()).await.unwrap();
            at.elapsed()
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    placement.shutdown();
    pool.shutdown().await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    json!({
        "activations_per_sec": ACTORS as f64 / elapsed.as_secs_f64(),
        "p50_ms": ms(latencies[latencies.len() / 2]),
        "p99_ms": ms(latencies[latencies.len() * 99 / 100]),
    })
}
