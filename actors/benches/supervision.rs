//! Supervision benchmarks.
//!
//! - restart latency, crash (ractor kill) → replacement started, for one_for_one with one child
//!   and for one_for_all / rest_for_one with 10 children (all 10 restarted);
//! - spawn rate: children started by a supervisor's init, and by `start_child` one at a time.
//!
//! Criterion reports its usual estimates; each benchmark also prints one JSON line with the
//! p50/p99 of individually timed samples (criterion has no percentiles).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cadre_actors::{
    ActorKind, Change, ChildSpec, StartContext, StartError, StartFuture, Started, Strategy,
    SupervisorFlags, SupervisorRef, Tree,
};
use criterion::{Criterion, criterion_group, criterion_main};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::runtime::Runtime;
use tokio::sync::broadcast;

struct Idle;

impl Actor for Idle {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

type Cells = Arc<Mutex<HashMap<String, ActorCell>>>;

fn idle(id: &str, cells: &Cells) -> ChildSpec {
    let cells = cells.clone();
    let start = move |ctx: StartContext| -> StartFuture {
        let cells = cells.clone();
        Box::pin(async move {
            let (actor, _) = Actor::spawn_linked(None, Idle, (), ctx.supervisor)
                .await
                .map_err(|e| StartError(e.to_string()))?;
            cells.lock().unwrap().insert(ctx.path, actor.get_cell());
            Ok(Started::actor(actor.get_cell()))
        })
    };
    ChildSpec::worker(id, ActorKind::Tool, start)
}

fn unlimited(strategy: Strategy) -> SupervisorFlags {
    SupervisorFlags {
        strategy,
        intensity: u32::MAX,
        period: Duration::from_secs(1),
        ..SupervisorFlags::default()
    }
}

struct Rig {
    sup: SupervisorRef,
    cells: Cells,
    events: broadcast::Receiver<cadre_actors::LifecycleEvent>,
    victim: String,
    restarted: usize,
}

async fn rig(strategy: Strategy, children: usize, victim: usize) -> Rig {
    let tree = Tree::new();
    let cells: Cells = Arc::default();
    let specs = (0..children)
        .map(|i| idle(&format!("c{i}"), &cells))
        .collect();
    let events = tree.subscribe();
    let (sup, _) = SupervisorRef::start_root("root", unlimited(strategy), specs, tree)
        .await
        .unwrap();
    let restarted = match strategy {
        Strategy::OneForOne => 1,
        Strategy::OneForAll => children,
        Strategy::RestForOne => children - victim,
    };
    Rig {
        sup,
        cells,
        events,
        victim: format!("root/c{victim}"),
        restarted,
    }
}

impl Rig {
    /// Kills the victim and waits until every child the strategy restarts runs again.
    async fn crash(&mut self) -> Duration {
        while self.events.try_recv().is_ok() {}
        let victim = self.cells.lock().unwrap()[&self.victim].clone();
        let t = Instant::now();
        victim.kill();
        let mut started = 0;
        while started < self.restarted {
            if let Change::Started { .. } = self.events.recv().await.unwrap().change {
                started += 1;
            }
        }
        t.elapsed()
    }
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{{\"bench\":\"{name}\",\"samples\":{},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        samples.len(),
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
}

fn restart_latency(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let cases = [
        (
            "one_for_one_restart_1_child",
            Strategy::OneForOne,
            1,
            0,
            20_000,
        ),
        (
            "one_for_all_restart_10_children",
            Strategy::OneForAll,
            10,
            5,
            5_000,
        ),
        (
            "rest_for_one_restart_10_children",
            Strategy::RestForOne,
            10,
            0,
            5_000,
        ),
    ];
    for (name, strategy, children, victim, samples) in cases {
        let mut rig = rt.block_on(rig(strategy, children, victim));
        let timed = rt.block_on(async {
            let mut v = Vec::with_capacity(samples);
            for _ in 0..samples {
                v.push(rig.crash().await);
            }
            v
        });
        percentiles(name, timed);
        c.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += rig.crash().await;
                    }
                    total
                })
            })
        });
        rt.block_on(rig.sup.shutdown());
    }
}

fn spawn_rate(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let n = 100_000;
    let cells: Cells = Arc::default();
    // Baseline: bare ractor actors linked to one parent, no supervision logic.
    let elapsed = rt.block_on(async {
        let (parent, _) = Actor::spawn(None, Idle, ()).await.unwrap();
        let t = Instant::now();
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            let (child, _) = Actor::spawn_linked(None, Idle, (), parent.get_cell())
                .await
                .unwrap();
            children.push(child);
        }
        let elapsed = t.elapsed();
        parent.kill();
        elapsed
    });
    println!(
        "{{\"bench\":\"ractor_spawn_linked_baseline\",\"actors\":{n},\"actors_per_sec\":{:.0}}}",
        n as f64 / elapsed.as_secs_f64()
    );
    // A supervisor starting its children at init.
    for n in [1_000, 10_000, 100_000] {
        let (elapsed, sup) = rt.block_on(async {
            let specs: Vec<_> = (0..n).map(|i| idle(&format!("c{i}"), &cells)).collect();
            let t = Instant::now();
            let (sup, _) = SupervisorRef::start_root(
                "root",
                unlimited(Strategy::OneForOne),
                specs,
                Tree::new(),
            )
            .await
            .unwrap();
            (t.elapsed(), sup)
        });
        rt.block_on(sup.shutdown());
        println!(
            "{{\"bench\":\"spawn_at_init\",\"actors\":{n},\"actors_per_sec\":{:.0}}}",
            n as f64 / elapsed.as_secs_f64()
        );
    }
    // start_child, one call per child.
    let (elapsed, sup) = rt.block_on(async {
        let (sup, _) =
            SupervisorRef::start_root("root", unlimited(Strategy::OneForOne), vec![], Tree::new())
                .await
                .unwrap();
        let specs: Vec<_> = (0..n).map(|i| idle(&format!("c{i}"), &cells)).collect();
        let t = Instant::now();
        for spec in specs {
            sup.start_child(spec).await.unwrap();
        }
        (t.elapsed(), sup)
    });
    rt.block_on(sup.shutdown());
    println!(
        "{{\"bench\":\"spawn_by_start_child\",\"actors\":{n},\"actors_per_sec\":{:.0}}}",
        n as f64 / elapsed.as_secs_f64()
    );
    let mut group = c.benchmark_group("spawn");
    group.sample_size(10);
    group.bench_function("supervisor_init_1000_children", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let specs: Vec<_> = (0..1000).map(|i| idle(&format!("c{i}"), &cells)).collect();
                    let t = Instant::now();
                    let (sup, _) = SupervisorRef::start_root(
                        "root",
                        unlimited(Strategy::OneForOne),
                        specs,
                        Tree::new(),
                    )
                    .await
                    .unwrap();
                    total += t.elapsed();
                    sup.shutdown().await;
                }
                total
            })
        })
    });
    group.finish();
}

criterion_group!(benches, restart_latency, spawn_rate);
criterion_main!(benches);
