//! Spawning, stopping and restarting actors at runtime, through the real CLI.

use std::time::Duration;

use cadre_tests::{Node, TempDir, alive, find, pid_of};
use serde_json::Value;

const GROUP: &str = "version: v1\nsupervisor:\n  children:\n    - id: group\n      supervisor:\n        strategy: rest_for_one\n        children:\n          - { id: first, process: { command: [sleep, \"1000\"] } }\n";

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn spawn_stop_and_restart_at_runtime() {
    let node = Node::start(GROUP);
    let dir = TempDir::new("spec");
    let spec = dir.path().join("web.yaml");
    std::fs::write(
        &spec,
        "id: web\nprocess: { command: [sleep, \"1000\"] }\nshutdown: 500\n",
    )
    .unwrap();

    // Under root, and under a nested supervisor (appended to its start order).
    let web = json(&node.cli(&[
        "actors",
        "spawn",
        "-f",
        spec.to_str().unwrap(),
        "-o",
        "json",
    ]));
    assert_eq!(
        (web["path"].as_str(), web["status"].as_str()),
        (Some("root/web"), Some("running"))
    );
    let pid = web["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));
    let nested = json(&node.cli(&[
        "actors",
        "spawn",
        "-f",
        spec.to_str().unwrap(),
        "--parent",
        "root/group",
        "-o",
        "json",
    ]));
    assert_eq!(nested["path"], "root/group/web");
    let tree = node.tree();
    let group: Vec<_> = find(&tree, "root/group")["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(group, ["root/group/first", "root/group/web"]);
    let ls = node.cli(&["actors", "ls", "-o", "json"]);
    let paths: Vec<String> = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for p in [
        "root",
        "system",
        "system/controller",
        "system/agents",
        "root/group",
        "root/group/first",
        "root/group/web",
        "root/web",
    ] {
        assert!(paths.contains(&p.to_string()), "{p} missing from {paths:?}");
    }

    // Stop: the process is gone, the spec stays.
    let stopped = json(&node.cli(&["actors", "stop", "root/web", "-o", "json"]));
    assert_eq!(stopped["status"], "stopped");
    assert!(stopped.get("pid").is_none());
    assert!(!alive(pid));
    // Restart: a new process.
    let restarted = json(&node.cli(&["actors", "restart", "root/web", "-o", "json"]));
    assert_eq!(
        (restarted["status"].as_str(), restarted["restarts"].as_u64()),
        (Some("running"), Some(1))
    );
    let new_pid = restarted["pid"].as_u64().unwrap() as u32;
    assert!(new_pid != pid && alive(new_pid));
    // Restart of a running one replaces its process too.
    let again = json(&node.cli(&["actors", "restart", "root/web", "-o", "json"]));
    assert_eq!(again["restarts"], 2);
    assert!(!alive(new_pid));
    // The supervisor supervises it like any configured child.
    let current = pid_of(&node.tree(), "root/web");
    unsafe { libc::kill(current as i32, libc::SIGKILL) };
    node.wait_tree("web restarted", Duration::from_secs(10), |t| {
        find(t, "root/web")["restarts"] == 3
    });
}

#[test]
fn bad_spawns_and_stops_fail_clearly_and_change_nothing() {
    let node = Node::start(GROUP);
    let dir = TempDir::new("bad");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "id: web\nrestart: sometimes\nprocess: { command: [sleep, \"1\"] }\n",
    )
    .unwrap();
    let out = node.cli(&["actors", "spawn", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:10: unknown restart `sometimes`",
            bad.display()
        )),
        "{err}"
    );

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "id: first\nprocess: { command: [sleep, \"1000\"] }\n",
    )
    .unwrap();
    let dup = node.cli(&[
        "actors",
        "spawn",
        "-f",
        good.to_str().unwrap(),
        "--parent",
        "root/group",
    ]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("AlreadyExists"),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );
    let nowhere = node.cli(&[
        "actors",
        "spawn",
        "-f",
        good.to_str().unwrap(),
        "--parent",
        "root/nope",
    ]);
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("NotFound"));
    let root = node.cli(&["actors", "stop", "root"]);
    assert!(
        String::from_utf8_lossy(&root.stderr).contains("FailedPrecondition"),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
    let missing = node.cli(&["actors", "stop", "root/ghost"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));

    let tree = node.tree();
    let group = find(&tree, "root/group")["children"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(group, 1, "nothing was added");
    assert_eq!(find(&tree, "root/group/first")["status"], "running");
}
