//! Supervised OS processes: real processes, real signals.

mod support;

use std::time::{Duration, Instant};

use cadre_actors::process::{ProcessSpec, process_child};
use cadre_actors::{
    Change, ChildStatus, ExitReason, Restart, Shutdown, Strategy, SupervisorFlags, SupervisorRef,
};

/// A process that exits 0 on SIGUSR1 and 3 on SIGUSR2, and dies by default on other signals.
/// The script touches `DIR/<its pid>` once its traps are set.
fn obedient(dir: &std::path::Path) -> String {
    format!(
        "trap 'exit 0' USR1; trap 'exit 3' USR2; touch {}/$$; while :; do sleep 0.02; done",
        dir.display()
    )
}

/// Makes a process exit with `how`: exit 0, SIGTERM, exit 3, SIGABRT (a crash) or SIGKILL.
async fn make_exit(dir: &std::path::Path, pid: u32, how: How) -> ExitReason {
    while !dir.join(pid.to_string()).exists() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (sig, reason) = match how {
        How::Normal => (libc::SIGUSR1, ExitReason::Normal),
        How::Shutdown => (libc::SIGTERM, ExitReason::Shutdown),
        How::Error => (
            libc::SIGUSR2,
            ExitReason::Error("exited with status 3".into()),
        ),
        How::Panic => (
            libc::SIGABRT,
            ExitReason::Error(format!("killed by signal {}", libc::SIGABRT)),
        ),
        How::Killed => (libc::SIGKILL, ExitReason::Killed),
    };
    unsafe { libc::kill(pid as i32, sig) };
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_restart_type_and_exit_reason_with_real_processes() {
    for strategy in [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ] {
        for restart in [Restart::Permanent, Restart::Transient, Restart::Temporary] {
            for how in ALL_HOWS {
                let h = Harness::new();
                let ready = std::env::temp_dir().join(format!(
                    "cadre-obedient-{}-{strategy:?}-{restart:?}-{how:?}",
                    std::process::id()
                ));
                std::fs::create_dir_all(&ready).unwrap();
                let sup = root(
                    &h,
                    strategy,
                    vec![
                        process_child("a", sh(&obedient(&ready))),
                        process_child("b", sh(&obedient(&ready))).restart(restart),
                        process_child("c", sh(&obedient(&ready))),
                    ],
                )
                .await;
                h.settle(3).await;
                h.clear().await;
                let before = pids(&h);
                let reason = make_exit(&ready, before[1].unwrap(), how).await;
                let want = expected(strategy, restart, how);
                let got = h.settle(want.len()).await;
                let case = format!("{strategy:?} {restart:?} {how:?}");
                assert_eq!(got, want, "{case}");
                let exited = h.raw_events().into_iter().find_map(|e| match e.change {
                    Change::Exited { reason } => Some(reason),
                    _ => None,
                });
                assert_eq!(exited, Some(reason), "{case}");
                let after = h.tree.snapshot("root").unwrap();
                let pid_a = after.children[0].pid;
                let group_restarted = strategy == Strategy::OneForAll && restarts(restart, how);
                assert_eq!(pid_a == before[0], !group_restarted, "{case}: a's pid");
                if restarts(restart, how) {
                    let b = &after.children[1];
                    assert!(
                        b.pid.is_some_and(alive) && b.pid != before[1],
                        "{case}: b runs anew"
                    );
                }
                sup.shutdown().await;
                let all_dead = before
                    .iter()
                    .chain(pids(&h).iter())
                    .flatten()
                    .all(|p| !alive(*p));
                assert!(all_dead, "{case}: processes left behind");
                let _ = std::fs::remove_dir_all(&ready);
            }
        }
    }
}
use support::{ALL_HOWS, Harness, How, ev, expected, restarts};

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: None,
    }
}

fn alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn pids(h: &Harness) -> Vec<Option<u32>> {
    h.tree
        .snapshot("root")
        .unwrap()
        .children
        .iter()
        .map(|c| c.pid)
        .collect()
}

async fn root(
    h: &Harness,
    strategy: Strategy,
    children: Vec<cadre_actors::ChildSpec>,
) -> SupervisorRef {
    let flags = SupervisorFlags {
        strategy,
        intensity: 5,
        ..SupervisorFlags::default()
    };
    SupervisorRef::start_root("root", flags, children, h.tree.clone())
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_rest_for_one_restarts_it_and_the_ones_after() {
    let h = Harness::new();
    let sup = root(
        &h,
        Strategy::RestForOne,
        vec![
            process_child("first", sh("exec sleep 1000")),
            process_child("middle", sh("exec sleep 1000")),
            process_child("last", sh("exec sleep 1000")),
        ],
    )
    .await;
    let before = pids(&h);
    assert!(before.iter().all(|p| p.is_some_and(alive)), "{before:?}");
    h.settle(3).await;
    h.clear().await;
    unsafe { libc::kill(before[1].unwrap() as i32, libc::SIGKILL) };
    h.wait_until("middle and last restarted", |e| {
        e.iter().filter(|x| x.1 == "started").count() == 2
    })
    .await;
    let after = pids(&h);
    assert_eq!(after[0], before[0], "first keeps its pid");
    assert_ne!(after[1], before[1]);
    assert_ne!(after[2], before[2]);
    assert!(
        !alive(before[1].unwrap()) && !alive(before[2].unwrap()),
        "old processes are gone"
    );
    let exit = h.raw_events().into_iter().find_map(|e| match e.change {
        Change::Exited { reason } => Some(reason),
        _ => None,
    });
    assert_eq!(exit, Some(ExitReason::Killed));
    let snap = h.tree.snapshot("root").unwrap();
    let restarts: Vec<_> = snap.children.iter().map(|c| c.restarts).collect();
    assert_eq!(restarts, [0, 1, 1]);
    sup.shutdown().await;
    assert!(
        after.iter().all(|p| !alive(p.unwrap())),
        "shutdown leaves no process behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_at_its_timeout() {
    let h = Harness::new();
    let ready = std::env::temp_dir().join(format!("cadre-stubborn-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let script = format!(
        "trap '' TERM; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let sup = root(
        &h,
        Strategy::OneForOne,
        vec![
            process_child("stubborn", sh(&script))
                .shutdown(Shutdown::Timeout(Duration::from_millis(400))),
            process_child("polite", sh("exec sleep 1000")),
        ],
    )
    .await;
    // SIGTERM before the shell has set its trap would kill it at once.
    while !ready.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = std::fs::remove_file(&ready);
    let p = pids(&h);
    let t = Instant::now();
    sup.terminate_child("polite").await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "SIGTERM stops a polite process at once"
    );
    let t = Instant::now();
    sup.terminate_child("stubborn").await.unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(!alive(p[0].unwrap()) && !alive(p[1].unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_decide_transient_restarts() {
    let h = Harness::new();
    let sup = root(
        &h,
        Strategy::OneForOne,
        vec![
            process_child("ok", sh("sleep 0.2; exit 0")).restart(Restart::Transient),
            process_child("fails", sh("sleep 0.2; exit 3")).restart(Restart::Transient),
        ],
    )
    .await;
    h.wait_until("fails restarted and ok exited", |e| {
        e.contains(&ev("root/fails", "restarting")) && e.contains(&ev("root/ok", "exited"))
    })
    .await;
    let reasons: Vec<_> = h
        .raw_events()
        .into_iter()
        .filter_map(|e| match e.change {
            Change::Exited { reason } => Some((e.path, reason)),
            _ => None,
        })
        .collect();
    assert!(reasons.contains(&("root/ok".into(), ExitReason::Normal)));
    assert!(reasons.contains(&(
        "root/fails".into(),
        ExitReason::Error("exited with status 3".into())
    )));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ok = &sup.which_children().await.unwrap()[0];
    assert_eq!((ok.id.as_str(), ok.status), ("ok", ChildStatus::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_run_fails_to_start_with_its_name() {
    let h = Harness::new();
    let flags = SupervisorFlags::default();
    let err = SupervisorRef::start_root(
        "root",
        flags,
        vec![process_child(
            "ghost",
            ProcessSpec {
                command: vec!["/no/such/program".into()],
                env: vec![],
                cwd: None,
            },
        )],
        h.tree.clone(),
    )
    .await
    .expect_err("start fails");
    assert!(
        err.0.contains("ghost") && err.0.contains("/no/such/program"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_cwd_reach_the_process() {
    let dir = std::env::temp_dir().join(format!("cadre-proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let h = Harness::new();
    let spec = ProcessSpec {
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo \"$GREETING\" > out.txt".into(),
        ],
        env: vec![("GREETING".into(), "hello".into())],
        cwd: Some(dir.clone()),
    };
    let _sup = root(
        &h,
        Strategy::OneForOne,
        vec![process_child("w", spec).restart(Restart::Transient)],
    )
    .await;
    h.wait_until("exit", |e| e.contains(&ev("root/w", "exited")))
        .await;
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "hello\n"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
