//! SIGKILL a real writer process mid-load, many times, then reopen the store and check that
//! every acknowledged append is there, seqs are contiguous, and no batch is partial.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use std::sync::Arc;

use cadre_actors::controller::{Controller, HistoryLimits};
use cadre_cluster::store::open_embedded;
use cadre_proto::v1::{Event, event};
use cadre_tests::{TempDir, cadre_bin};

struct Ack {
    conversation: String,
    first: u64,
    last: u64,
    batch: String,
}

#[test]
fn sigkill_mid_load_loses_no_acknowledged_append_and_leaves_no_partial_batch() {
    let dir = TempDir::new("crash");
    let data = dir.path().join("data");
    let mut acks = Vec::new();
    for run in 0..12 {
        let mut writer = Command::new(cadre_bin())
            .args([
                "debug",
                "eventlog-writer",
                "--run",
                &format!("r{run}"),
                "--data-dir",
            ])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer");
        let stdout = writer.stdout.take().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let f: Vec<&str> = line.split(' ').collect();
                if f.len() == 5 && f[0] == "ack" {
                    sink.lock().unwrap().push(Ack {
                        conversation: f[1].into(),
                        first: f[2].parse().unwrap(),
                        last: f[3].parse().unwrap(),
                        batch: f[4].into(),
                    });
                }
            }
        });
        // Kill it mid-load: after it has acknowledged something, at a varying moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while seen.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "run {run}: the writer never acknowledged"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50 + 40 * (run % 5)));
        unsafe { libc::kill(writer.id() as i32, libc::SIGKILL) };
        writer.wait().unwrap();
        reader.join().unwrap();
        let run_acks = std::mem::take(&mut *seen.lock().unwrap());
        acks.extend(run_acks);
    }

    // Reopen through a controller: startup replays what the log holds but had not materialized.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let logs: HashMap<String, Vec<Event>> = rt.block_on(async {
        let (store, log) = open_embedded(&data).expect("reopen after the last kill");
        let controller =
            Controller::with_log(Arc::new(store), Arc::new(log), HistoryLimits::default());
        controller
            .start_detached()
            .await
            .expect("controller starts and replays");
        let mut logs = HashMap::new();
        for c in 0..4 {
            let conversation = format!("c{c}");
            let events = controller.read(&conversation, 0, usize::MAX).await.unwrap();
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.seq, i as u64 + 1, "{conversation}: contiguous from 1");
            }
            logs.insert(conversation, events);
        }
        logs
    });
    let part = |e: &Event| -> (String, u64, u64) {
        let Some(event::Kind::OutputEmitted(o)) = &e.kind else {
            panic!("unexpected event")
        };
        let (batch, rest) = o.text.split_once(':').unwrap();
        let (k, n) = rest.split_once('/').unwrap();
        (batch.to_string(), k.parse().unwrap(), n.parse().unwrap())
    };
    // No partial batch: each batch's parts 0..n sit at consecutive seqs.
    for (conversation, events) in &logs {
        let mut i = 0;
        while i < events.len() {
            let (batch, k, n) = part(&events[i]);
            assert_eq!(
                k,
                0,
                "{conversation}: batch {batch} starts mid-way at seq {}",
                i + 1
            );
            for j in 0..n {
                let e = events
                    .get(i + j as usize)
                    .unwrap_or_else(|| panic!("{conversation}: batch {batch} is cut short"));
                assert_eq!(
                    part(e),
                    (batch.clone(), j, n),
                    "{conversation}: batch {batch} is not whole"
                );
            }
            i += n as usize;
        }
    }
    // Every acknowledged append is present where it was acknowledged.
    for ack in &acks {
        let events = &logs[&ack.conversation];
        assert!(
            ack.last as usize <= events.len(),
            "acked {}..{} of {} lost",
            ack.first,
            ack.last,
            ack.conversation
        );
        for seq in ack.first..=ack.last {
            let (batch, k, _) = part(&events[seq as usize - 1]);
            assert_eq!(
                (batch.as_str(), k),
                (ack.batch.as_str(), seq - ack.first),
                "acked event at seq {seq}"
            );
        }
    }
    let total: usize = logs.values().map(Vec::len).sum();
    eprintln!(
        "{} acknowledged appends over 12 kills; {total} events in the log",
        acks.len()
    );
}
