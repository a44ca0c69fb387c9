//! OTP supervision scenarios, observed through the tree's lifecycle events: every strategy ×
//! restart type × exit reason, intensity and escalation, shutdown order and timeouts,
//! significant children, dynamic children, backoff and failed restarts.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cadre_actors::{
    AutoShutdown, Backoff, ChildSpec, ChildStatus, ExitReason, Restart, Shutdown, Strategy,
    SupervisorError, SupervisorFlags, SupervisorRef, supervisor_child,
};
use support::{ALL_HOWS, Harness, How, WorkerBehaviour, ev, expected, restarts};

fn flags(strategy: Strategy, intensity: u32) -> SupervisorFlags {
    SupervisorFlags {
        strategy,
        intensity,
        period: Duration::from_secs(3600),
        ..SupervisorFlags::default()
    }
}

async fn start(h: &Harness, flags: SupervisorFlags, children: Vec<ChildSpec>) -> SupervisorRef {
    let (sup, _) = SupervisorRef::start_root("root", flags, children, h.tree.clone())
        .await
        .expect("root starts");
    sup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_restart_type_and_exit_reason() {
    for strategy in [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ] {
        for restart in [Restart::Permanent, Restart::Transient, Restart::Temporary] {
            for how in ALL_HOWS {
                let h = Harness::new();
                let sup = start(
                    &h,
                    flags(strategy, 10),
                    vec![h.worker("a"), h.worker("b").restart(restart), h.worker("c")],
                )
                .await;
                h.settle(3).await;
                h.clear().await;
                let before_a = h.current("root/a").get_id();
                h.exit("root/b", how).await;
                let want = expected(strategy, restart, how);
                let got = h.settle(want.len()).await;
                assert_eq!(got, want, "{strategy:?} {restart:?} {how:?}");

                // The exit reason is classified as OTP does.
                let exited = h
                    .raw_events()
                    .into_iter()
                    .find_map(|e| match e.change {
                        cadre_actors::Change::Exited { reason } => Some(reason),
                        _ => None,
                    })
                    .expect("an exit event");
                let reason_ok = match how {
                    How::Normal => exited == ExitReason::Normal,
                    How::Shutdown => exited == ExitReason::Shutdown,
                    How::Killed => exited == ExitReason::Killed,
                    How::Error => exited == ExitReason::Error("boom".into()),
                    How::Panic => exited == ExitReason::Error("worker panicked".into()),
                };
                assert!(reason_ok, "{how:?} classified as {exited:?}");

                let children = sup.which_children().await.unwrap();
                let b = children.iter().find(|c| c.id == "b");
                match (restarts(restart, how), restart) {
                    (true, _) => assert_eq!(b.unwrap().status, ChildStatus::Running),
                    (false, Restart::Temporary) => assert!(b.is_none(), "temporary is removed"),
                    (false, _) => assert_eq!(b.unwrap().status, ChildStatus::Stopped),
                }
                let a_same = h.current("root/a").get_id() == before_a;
                let a_restarted = strategy == Strategy::OneForAll && restarts(restart, how);
                assert_eq!(a_same, !a_restarted, "{strategy:?} {restart:?} {how:?}: a");
                sup.shutdown().await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_restart_drops_temporary_siblings() {
    let h = Harness::new();
    let sup = start(
        &h,
        flags(Strategy::OneForAll, 10),
        vec![
            h.worker("a"),
            h.worker("t").restart(Restart::Temporary),
            h.worker("c"),
        ],
    )
    .await;
    h.settle(3).await;
    h.clear().await;
    h.exit("root/a", How::Error).await;
    let got = h.settle(8).await;
    assert_eq!(
        got,
        vec![
            ev("root/a", "exited"),
            ev("root/c", "terminated"),
            ev("root/t", "terminated"),
            ev("root/t", "deleted"),
            ev("root/a", "restarting"),
            ev("root/c", "restarting"),
            ev("root/a", "started"),
            ev("root/c", "started"),
        ]
    );
    let ids: Vec<_> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intensity_exceeded_terminates_children_in_reverse_and_fails() {
    let h = Harness::new();
    let (sup, handle) = SupervisorRef::start_root(
        "root",
        flags(Strategy::OneForOne, 2),
        vec![h.worker("a"), h.worker("b"), h.worker("c")],
        h.tree.clone(),
    )
    .await
    .unwrap();
    h.settle(3).await;
    for n in [4, 5] {
        h.exit("root/b", How::Error).await;
        h.wait_until("restart", |e| {
            e.iter().filter(|x| x.1 == "started").count() == n
        })
        .await;
    }
    h.clear().await;
    h.exit("root/b", How::Error).await;
    handle.await.unwrap();
    assert_eq!(
        h.settle(4).await,
        vec![
            ev("root/b", "exited"),
            ev("root/c", "terminated"),
            ev("root/a", "terminated"),
            ev("root", "escalated"),
        ]
    );
    assert_eq!(*h.log.lock().unwrap(), ["stop:root/c", "stop:root/a"]);
    assert!(matches!(
        sup.which_children().await,
        Err(SupervisorError::Unavailable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intensity_window_slides() {
    let h = Harness::new();
    let f = SupervisorFlags {
        period: Duration::from_secs(1),
        ..flags(Strategy::OneForOne, 1)
    };
    let (_sup, handle) = SupervisorRef::start_root("root", f, vec![h.worker("a")], h.tree.clone())
        .await
        .unwrap();
    h.settle(1).await;
    // One restart per window is allowed: spaced out, they never add up.
    for round in 0..3 {
        h.exit("root/a", How::Error).await;
        h.wait_until("restart", |e| {
            e.iter().filter(|x| x.1 == "started").count() == round + 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(
        !handle.is_finished(),
        "spaced restarts must not exceed intensity"
    );
    // Two inside one window do.
    h.exit("root/a", How::Error).await;
    h.wait_until("restart", |e| {
        e.iter().filter(|x| x.1 == "started").count() == 5
    })
    .await;
    h.exit("root/a", How::Error).await;
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("supervisor gives up")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_goes_up_three_levels() {
    let h = Harness::new();
    let leaf = supervisor_child("leaf", flags(Strategy::OneForOne, 1), vec![h.worker("w")]);
    let mid = supervisor_child("mid", flags(Strategy::OneForOne, 1), vec![leaf]);
    let _root = start(&h, flags(Strategy::OneForOne, 5), vec![mid]).await;
    h.settle(3).await;

    let w = "root/mid/leaf/w";
    // Two crashes: leaf exceeds intensity 1 and fails; mid restarts leaf (mid: 1 restart).
    h.exit(w, How::Error).await;
    h.wait_until("leaf restarts w", |e| {
        e.iter().filter(|x| x.0 == w && x.1 == "started").count() == 2
    })
    .await;
    h.exit(w, How::Error).await;
    h.wait_until("mid restarts leaf", |e| {
        e.iter()
            .filter(|x| x.0 == "root/mid/leaf" && x.1 == "started")
            .count()
            == 2
    })
    .await;
    // Two more: leaf fails again, which is mid's second restart: mid fails; root restarts mid.
    h.exit(w, How::Error).await;
    h.wait_until("leaf restarts w", |e| {
        e.iter().filter(|x| x.0 == w && x.1 == "started").count() == 4
    })
    .await;
    h.exit(w, How::Error).await;
    let evs = h
        .wait_until("root restarts mid", |e| {
            e.iter()
                .filter(|x| x.0 == "root/mid" && x.1 == "started")
                .count()
                == 2
        })
        .await;
    let escalations: Vec<_> = evs
        .iter()
        .filter(|e| e.1 == "escalated")
        .map(|e| e.0.as_str())
        .collect();
    assert_eq!(escalations, ["root/mid/leaf", "root/mid/leaf", "root/mid"]);
    let tree = h.tree.snapshot("root").unwrap();
    let mid = &tree.children[0];
    assert_eq!(
        (mid.path.as_str(), mid.restarts, mid.status),
        ("root/mid", 1, ChildStatus::Running)
    );
    assert_eq!(mid.children[0].path, "root/mid/leaf");
    assert_eq!(
        mid.children[0].restarts, 0,
        "a fresh mid starts a fresh leaf"
    );
    assert_eq!(mid.children[0].children[0].status, ChildStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_in_reverse_start_order_through_nested_supervisors() {
    let h = Harness::new();
    let inner = supervisor_child(
        "inner",
        flags(Strategy::OneForOne, 1),
        vec![h.worker("x"), h.worker("y")],
    );
    let sup = start(
        &h,
        flags(Strategy::OneForOne, 1),
        vec![h.worker("a"), inner, h.worker("c")],
    )
    .await;
    h.settle(5).await;
    h.clear().await;
    sup.shutdown().await;
    assert_eq!(
        *h.log.lock().unwrap(),
        [
            "stop:root/c",
            "stop:root/inner/y",
            "stop:root/inner/x",
            "stop:root/a"
        ]
    );
    let terminated: Vec<_> = h
        .wait_until("five terminations", |e| {
            e.iter().filter(|x| x.1 == "terminated").count() == 5
        })
        .await
        .into_iter()
        .filter(|e| e.1 == "terminated")
        .map(|e| e.0)
        .collect();
    assert_eq!(
        terminated,
        [
            "root/c",
            "root/inner/y",
            "root/inner/x",
            "root/inner",
            "root/a"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_kills_a_slow_child() {
    let h = Harness::new();
    let slow = WorkerBehaviour {
        stop_delay: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let patient = WorkerBehaviour {
        stop_delay: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let sup = start(
        &h,
        flags(Strategy::OneForOne, 1),
        vec![
            h.worker_with("slow", slow.clone())
                .shutdown(Shutdown::Timeout(Duration::from_millis(200))),
            h.worker_with("brutal", slow).shutdown(Shutdown::BrutalKill),
            h.worker_with("patient", patient)
                .shutdown(Shutdown::Infinity),
        ],
    )
    .await;
    h.settle(3).await;

    let t = Instant::now();
    sup.terminate_child("patient").await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "infinity waits for the stop"
    );
    assert_eq!(*h.log.lock().unwrap(), ["stop:root/patient"]);

    let t = Instant::now();
    sup.terminate_child("brutal").await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "brutal_kill does not wait"
    );

    let t = Instant::now();
    sup.terminate_child("slow").await.unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        *h.log.lock().unwrap(),
        ["stop:root/patient"],
        "killed children never finish stopping"
    );
    let statuses: Vec<_> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [ChildStatus::Stopped; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_significant_child_exit_shuts_the_supervisor_down() {
    let h = Harness::new();
    let group = supervisor_child(
        "group",
        SupervisorFlags {
            auto_shutdown: AutoShutdown::AnySignificant,
            ..flags(Strategy::OneForOne, 5)
        },
        vec![
            h.worker("a"),
            h.worker("s").restart(Restart::Transient).significant(true),
        ],
    )
    .restart(Restart::Transient);
    let root = start(&h, flags(Strategy::OneForOne, 5), vec![group]).await;
    h.settle(3).await;

    // An abnormal exit of a transient significant child is a restart, not a shutdown.
    h.exit("root/group/s", How::Error).await;
    h.wait_until("s restarted", |e| {
        e.iter()
            .filter(|x| x.0 == "root/group/s" && x.1 == "started")
            .count()
            == 2
    })
    .await;
    h.clear().await;
    h.exit("root/group/s", How::Normal).await;
    let evs = h
        .wait_until("group exits", |e| e.contains(&ev("root/group", "exited")))
        .await;
    assert_eq!(
        evs,
        vec![
            ev("root/group/s", "exited"),
            ev("root/group/a", "terminated"),
            ev("root/group", "exited")
        ]
    );
    let exit = h.raw_events().into_iter().find(|e| {
        e.path == "root/group" && matches!(e.change, cadre_actors::Change::Exited { .. })
    });
    assert!(matches!(
        exit.unwrap().change,
        cadre_actors::Change::Exited {
            reason: ExitReason::Shutdown
        }
    ));
    // `shutdown` is a normal exit: the transient group is not restarted.
    let children = root.which_children().await.unwrap();
    assert_eq!(children[0].status, ChildStatus::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_significant_waits_for_every_significant_child() {
    let h = Harness::new();
    let (_sup, handle) = SupervisorRef::start_root(
        "root",
        SupervisorFlags {
            auto_shutdown: AutoShutdown::AllSignificant,
            ..flags(Strategy::OneForOne, 5)
        },
        vec![
            h.worker("a"),
            h.worker("s1").restart(Restart::Temporary).significant(true),
            h.worker("s2").restart(Restart::Transient).significant(true),
        ],
        h.tree.clone(),
    )
    .await
    .unwrap();
    h.settle(3).await;
    h.exit("root/s1", How::Error).await;
    h.settle(2).await;
    assert!(
        !handle.is_finished(),
        "one significant child is still running"
    );
    h.exit("root/s2", How::Shutdown).await;
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("auto shutdown")
        .unwrap();
    h.wait_until("a terminated", |e| e.contains(&ev("root/a", "terminated")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_children() {
    let h = Harness::new();
    let sup = start(
        &h,
        SupervisorFlags {
            max_children: Some(3),
            ..flags(Strategy::OneForOne, 5)
        },
        vec![h.worker("a")],
    )
    .await;
    let info = sup.start_child(h.worker("b")).await.unwrap();
    assert_eq!((info.id.as_str(), info.status), ("b", ChildStatus::Running));
    assert_eq!(
        sup.start_child(h.worker("b")).await,
        Err(SupervisorError::Running("b".into()))
    );
    sup.start_child(h.worker("c").restart(Restart::Temporary))
        .await
        .unwrap();
    assert_eq!(
        sup.start_child(h.worker("d")).await,
        Err(SupervisorError::MaxChildren(3))
    );
    let counts = sup.count_children().await.unwrap();
    assert_eq!(
        (
            counts.specs,
            counts.active,
            counts.workers,
            counts.supervisors
        ),
        (3, 3, 3, 0)
    );

    // terminate keeps the spec (restart_child brings it back); a temporary one is removed.
    sup.terminate_child("b").await.unwrap();
    assert_eq!(
        sup.delete_child("a").await,
        Err(SupervisorError::Running("a".into()))
    );
    assert_eq!(
        sup.start_child(h.worker("b")).await,
        Err(SupervisorError::AlreadyPresent("b".into()))
    );
    let b = sup.restart_child("b").await.unwrap();
    assert_eq!((b.status, b.restarts), (ChildStatus::Running, 1));
    sup.terminate_child("c").await.unwrap();
    sup.terminate_child("b").await.unwrap();
    sup.delete_child("b").await.unwrap();
    assert_eq!(
        sup.restart_child("b").await,
        Err(SupervisorError::NotFound("b".into()))
    );
    let ids: Vec<_> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["a"]);

    // A dynamically added child is supervised like any other, in start order.
    sup.start_child(h.worker("e")).await.unwrap();
    h.clear().await;
    h.exit("root/e", How::Killed).await;
    h.settle(3).await;
    assert_eq!(
        h.events(),
        vec![
            ev("root/e", "exited"),
            ev("root/e", "restarting"),
            ev("root/e", "started")
        ]
    );

    // Invalid specs are refused and change nothing.
    let bad = h.worker("s").restart(Restart::Permanent).significant(true);
    assert!(matches!(
        sup.start_child(bad).await,
        Err(SupervisorError::InvalidSpec { .. })
    ));
    assert_eq!(sup.count_children().await.unwrap().specs, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_supervisor_removes_children_that_end_without_a_restart() {
    let h = Harness::new();
    let sup = start(
        &h,
        SupervisorFlags {
            dynamic: true,
            ..flags(Strategy::OneForOne, 5)
        },
        Vec::new(),
    )
    .await;
    for id in ["t", "f"] {
        sup.start_child(h.worker(id).restart(Restart::Transient))
            .await
            .unwrap();
    }
    // A transient child that fails is restarted; one that ends normally is gone.
    h.exit("root/f", How::Error).await;
    h.exit("root/t", How::Normal).await;
    h.settle(4).await;
    let children: Vec<_> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.status, c.restarts))
        .collect();
    assert_eq!(children, [("f".to_string(), ChildStatus::Running, 1)]);
    // Its id can be used again at once.
    sup.start_child(h.worker("t").restart(Restart::Transient))
        .await
        .unwrap();
    // terminate_child keeps the spec, as in any supervisor.
    sup.terminate_child("t").await.unwrap();
    assert_eq!(
        sup.start_child(h.worker("t")).await,
        Err(SupervisorError::AlreadyPresent("t".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_restarts_are_retried_and_counted() {
    let h = Harness::new();
    let fails = Arc::new(Mutex::new(0));
    let flaky = WorkerBehaviour {
        fail_starts: Some(fails.clone()),
        ..Default::default()
    };
    let (sup, handle) = SupervisorRef::start_root(
        "root",
        flags(Strategy::OneForOne, 3),
        vec![h.worker_with("a", flaky)],
        h.tree.clone(),
    )
    .await
    .unwrap();
    h.settle(1).await;
    // Crash, then the next two starts fail: three restarts in all, within intensity 3.
    *fails.lock().unwrap() = 2;
    h.exit("root/a", How::Error).await;
    h.wait_until("a runs again", |e| {
        e.iter().filter(|x| x.1 == "started").count() == 2
    })
    .await;
    assert_eq!(
        sup.which_children().await.unwrap()[0].status,
        ChildStatus::Running
    );
    assert!(!handle.is_finished());
    // One more failing start than the remaining budget: the supervisor gives up.
    *fails.lock().unwrap() = 5;
    h.exit("root/a", How::Error).await;
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("gives up")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_delays_restarts() {
    let h = Harness::new();
    let f = SupervisorFlags {
        backoff: Some(Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(1),
            jitter: 0.0,
        }),
        ..flags(Strategy::OneForOne, 5)
    };
    let _sup = start(&h, f, vec![h.worker("a")]).await;
    h.settle(1).await;
    for (round, min_ms) in [(2usize, 200u64), (3, 400)] {
        let t = Instant::now();
        h.exit("root/a", How::Error).await;
        h.wait_until("restart", |e| {
            e.iter().filter(|x| x.1 == "started").count() == round
        })
        .await;
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(min_ms - 20),
            "restart {round} after {took:?}"
        );
    }
}
