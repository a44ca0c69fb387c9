//! Property test: random crash sequences against a small reference model of OTP's
//! `supervisor` rules. After every crash the real supervisor must have emitted exactly the
//! events the model predicts (same restarts, same order, same escalation) and its children must
//! be in the states the model says.

mod support;

use std::time::Duration;

use cadre_actors::{ChildStatus, Restart, Strategy, SupervisorFlags, SupervisorRef};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use support::{Ev, Harness, How, ev};

#[derive(Debug, Clone)]
struct Case {
    strategy: Strategy,
    intensity: u32,
    restarts: Vec<Restart>,
    /// (child index, modulo the children still present; exit reason)
    crashes: Vec<(usize, How)>,
}

/// The reference model: OTP's rules and nothing else.
struct Model {
    strategy: Strategy,
    intensity: u32,
    kids: Vec<Kid>,
    restarts: u32,
    escalated: bool,
}

#[derive(Debug, Clone)]
struct Kid {
    id: String,
    restart: Restart,
    running: bool,
    starts: u32,
}

impl Model {
    fn path(&self, i: usize) -> String {
        format!("root/{}", self.kids[i].id)
    }

    fn exit(&mut self, i: usize, how: How) -> Vec<Ev> {
        let mut out = vec![ev(&self.path(i), "exited")];
        self.kids[i].running = false;
        let normal = matches!(how, How::Normal | How::Shutdown);
        let restart = match self.kids[i].restart {
            Restart::Permanent => true,
            Restart::Transient => !normal,
            Restart::Temporary => false,
        };
        if !restart {
            if self.kids[i].restart == Restart::Temporary {
                out.push(ev(&self.path(i), "deleted"));
                self.kids.remove(i);
            }
            return out;
        }
        self.restarts += 1;
        if self.restarts > self.intensity {
            let all: Vec<usize> = (0..self.kids.len()).collect();
            self.terminate(&all, &mut out);
            out.push(ev("root", "escalated"));
            self.escalated = true;
            return out;
        }
        let id = self.kids[i].id.clone();
        let group: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![i],
            Strategy::OneForAll => (0..self.kids.len()).collect(),
            Strategy::RestForOne => (i..self.kids.len()).collect(),
        };
        let mut group_ids: Vec<String> = group.iter().map(|g| self.kids[*g].id.clone()).collect();
        if self.strategy != Strategy::OneForOne {
            self.terminate(&group, &mut out);
            group_ids.retain(|g| self.kids.iter().any(|k| &k.id == g));
        }
        debug_assert!(group_ids.contains(&id));
        for g in &group_ids {
            out.push(ev(&format!("root/{g}"), "restarting"));
        }
        for g in &group_ids {
            out.push(ev(&format!("root/{g}"), "started"));
            let k = self.kids.iter_mut().find(|k| &k.id == g).unwrap();
            k.running = true;
            k.starts += 1;
        }
        out
    }

    /// Terminates the given children in reverse order; temporary ones are removed.
    fn terminate(&mut self, idx: &[usize], out: &mut Vec<Ev>) {
        for &g in idx.iter().rev() {
            if self.kids[g].running {
                out.push(ev(&self.path(g), "terminated"));
                self.kids[g].running = false;
            }
            if self.kids[g].restart == Restart::Temporary {
                out.push(ev(&self.path(g), "deleted"));
            }
        }
        self.kids
            .retain(|k| k.restart != Restart::Temporary || k.running);
    }
}

fn case() -> impl proptest::strategy::Strategy<Value = Case> {
    let strategy = prop_oneof![
        Just(Strategy::OneForOne),
        Just(Strategy::OneForAll),
        Just(Strategy::RestForOne)
    ];
    let restart = prop_oneof![
        Just(Restart::Permanent),
        Just(Restart::Transient),
        Just(Restart::Temporary)
    ];
    let how = prop_oneof![
        Just(How::Normal),
        Just(How::Shutdown),
        Just(How::Error),
        Just(How::Killed)
    ];
    (
        strategy,
        0u32..5,
        prop::collection::vec(restart, 2..5),
        prop::collection::vec((0usize..8, how), 1..9),
    )
        .prop_map(|(strategy, intensity, restarts, crashes)| Case {
            strategy,
            intensity,
            restarts,
            crashes,
        })
}

async fn run(case: Case) -> Result<(), TestCaseError> {
    let h = Harness::new();
    let children = (0..case.restarts.len())
        .map(|i| h.worker(&format!("k{i}")).restart(case.restarts[i]))
        .collect();
    let flags = SupervisorFlags {
        strategy: case.strategy,
        intensity: case.intensity,
        period: Duration::from_secs(3600),
        ..SupervisorFlags::default()
    };
    let (sup, handle) = SupervisorRef::start_root("root", flags, children, h.tree.clone())
        .await
        .unwrap();
    let mut model = Model {
        strategy: case.strategy,
        intensity: case.intensity,
        kids: (0..case.restarts.len())
            .map(|i| Kid {
                id: format!("k{i}"),
                restart: case.restarts[i],
                running: true,
                starts: 1,
            })
            .collect(),
        restarts: 0,
        escalated: false,
    };
    h.settle(case.restarts.len()).await;

    let mut handle = Some(handle);
    for (n, how) in case.crashes {
        if model.kids.is_empty() {
            break;
        }
        let i = n % model.kids.len();
        if !model.kids[i].running {
            continue;
        }
        h.clear().await;
        let path = model.path(i);
        h.exit(&path, how).await;
        let want = model.exit(i, how);
        // Barrier: once the supervisor answers (or has died), it has handled the exit.
        if model.escalated {
            tokio::time::timeout(Duration::from_secs(10), handle.take().unwrap())
                .await
                .expect("supervisor exits")
                .unwrap();
        } else {
            sup.which_children().await.unwrap();
        }
        let got = h.settle(want.len()).await;
        prop_assert_eq!(&got, &want, "crash of {} with {:?}", path, how);
        if model.escalated {
            return Ok(());
        }
        let real = sup.which_children().await.unwrap();
        let ids: Vec<_> = real.iter().map(|c| c.id.clone()).collect();
        let model_ids: Vec<_> = model.kids.iter().map(|k| k.id.clone()).collect();
        prop_assert_eq!(ids, model_ids);
        for (r, k) in real.iter().zip(&model.kids) {
            let status = if k.running {
                ChildStatus::Running
            } else {
                ChildStatus::Stopped
            };
            prop_assert_eq!(r.status, status, "{}", k.id);
            prop_assert_eq!(r.restarts, k.starts - 1, "{}", k.id);
        }
    }
    sup.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn supervisor_follows_otp_rules(case in case()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(case))?;
    }
}
