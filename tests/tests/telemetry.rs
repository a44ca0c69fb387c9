//! What operators watch: a real Prometheus scrapes a node's `/metrics`.

use std::time::Duration;

use cadre_tests::prometheus::{Prometheus, get};
use cadre_tests::{Node, free_port, pid_of};

#[test]
fn prometheus_scrapes_execs_histograms_and_restarts() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&format!(
        "version: v1\ntelemetry: {{ metrics_listen: \"{metrics}\" }}\nsupervisor:\n  \
         intensity: 10\n  children:\n    - {{ id: sleeper, process: {{ command: [sleep, \"1000\"] }} }}\n"
    ));
    let (code, text) = get(&format!("http://{metrics}/metrics")).expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(text.contains("cadre_build_info{version="), "{text}");
    let prometheus = Prometheus::start(&[&metrics]);
    prometheus
        .wait_for("up", 1.0, Duration::from_secs(20))
        .expect("the node is scraped");

    const N: usize = 7;
    for i in 0..N {
        let out = node.exec_echo(&format!("c{i}"), "hello");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let n = N as f64;
    for (query, want) in [
        ("cadre_execs_started_total{agent=\"echo\"}", n),
        (
            "cadre_execs_ended_total{agent=\"echo\",state=\"completed\"}",
            n,
        ),
        ("cadre_exec_duration_seconds_count{agent=\"echo\"}", n),
    ] {
        prometheus
            .wait_for(query, want, Duration::from_secs(20))
            .unwrap_or_else(|got| panic!("{query}: want {want}, got {got:?}"));
    }
    // Non-empty histograms: a median inside the buckets, and appends in the log's.
    let median = prometheus
        .query("histogram_quantile(0.5, sum by (le) (cadre_exec_duration_seconds_bucket))")
        .expect("an exec duration median");
    assert!(median > 0.0 && median < 10.0, "median {median}");
    assert!(
        prometheus
            .query("cadre_log_append_duration_seconds_count")
            .unwrap()
            >= n * 2.0
    );
    assert!(prometheus.query("cadre_log_batch_size_count").unwrap() >= 1.0);

    let restarts = "cadre_supervisor_restarts_total{path=\"root/sleeper\"}";
    let before = prometheus.query(restarts).unwrap_or(0.0);
    let pid = pid_of(&node.tree(), "root/sleeper");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    prometheus
        .wait_for(restarts, before + 1.0, Duration::from_secs(20))
        .unwrap_or_else(|got| panic!("{restarts}: want {}, got {got:?}", before + 1.0));
    let restarted = node.wait_tree("the sleeper's new pid", Duration::from_secs(10), |t| {
        cadre_tests::find(t, "root/sleeper")["pid"]
            .as_u64()
            .is_some_and(|p| p != u64::from(pid))
    });
    assert_eq!(cadre_tests::find(&restarted, "root/sleeper")["restarts"], 1);
}
