//! What a new user hit (issue 21): requests that must be refused, with an error that names the
//! actor, conversation or field, and that change nothing. Every check here failed on the code
//! before the fix.

use cadre_tests::{Node, TempDir, find};
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The events of `conversation` as JSON lines (the command must succeed).
fn log(node: &Node, conversation: &str) -> Vec<Value> {
    node.json_lines(&["conversations", "log", conversation, "-o", "json"])
}

/// The ids of the callers' conversations (not the node's own `cadre.*`).
fn conversations(node: &Node) -> Vec<String> {
    node.json_lines(&["conversations", "ls", "-o", "json"])
        .iter()
        .filter_map(|c| c["conversation_id"].as_str().map(String::from))
        .filter(|id| !id.starts_with("cadre."))
        .collect()
}

#[test]
fn the_nodes_own_actors_cannot_be_stopped_restarted_or_given_children() {
    let node = Node::start("version: v1\n");
    let before = node.tree();
    let controller = find(&before, "system/controller").clone();
    for (args, path) in [
        (
            vec!["actors", "stop", "system/controller"],
            "system/controller",
        ),
        (
            vec!["actors", "restart", "system/controller"],
            "system/controller",
        ),
        (vec!["actors", "stop", "system"], "system"),
        (vec!["actors", "stop", "system/agents"], "system/agents"),
        (vec!["actors", "restart", "system/agents"], "system/agents"),
    ] {
        let out = node.cli(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let message = stderr(&out);
        assert!(
            message.contains("FailedPrecondition")
                && message.contains(&format!("`{path}`"))
                && message.contains("system actor"),
            "{args:?}: {message}"
        );
    }
    let dir = TempDir::new("spec");
    let spec = dir.path().join("sleeper.yaml");
    std::fs::write(
        &spec,
        "id: sleeper\nprocess: { command: [sleep, \"1000\"] }\n",
    )
    .unwrap();
    let out = node.cli(&[
        "actors",
        "spawn",
        "-f",
        spec.to_str().unwrap(),
        "--parent",
        "system/agents",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("system/agents"), "{}", stderr(&out));

    // Nothing changed: the controller runs as it did, and execs work.
    let after = node.tree();
    let now = find(&after, "system/controller");
    assert_eq!(now["status"], "running");
    assert_eq!(now["restarts"], controller["restarts"]);
    assert!(
        find(&after, "system/agents")["children"]
            .as_array()
            .is_none_or(|c| c.is_empty()),
        "nothing spawned under system/agents: {after:#}"
    );
    let out = node.exec_echo("still-works", "hello");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
}

#[test]
fn the_nodes_conversations_are_read_only_for_callers() {
    let node = Node::start("version: v1\n");
    assert!(node.exec_echo("mine", "first").status.success());
    let audit_before = log(&node, "cadre.audit");

    let exec = node.exec_echo("cadre.audit", "system/controller terminated");
    assert_eq!(exec.status.code(), Some(2), "{}", stderr(&exec));
    assert!(
        stderr(&exec).contains("--conversation: `cadre.audit`"),
        "{}",
        stderr(&exec)
    );
    let fork = node.cli(&[
        "fork",
        "--conversation",
        "mine",
        "--at-seq",
        "1",
        "--to",
        "cadre.mine",
    ]);
    assert_eq!(fork.status.code(), Some(2), "{}", stderr(&fork));
    assert!(
        stderr(&fork).contains("--to: `cadre.mine`"),
        "{}",
        stderr(&fork)
    );
    for id in ["cadre.audit", "cadre.tools"] {
        let delete = node.cli(&["conversations", "delete", id]);
        assert_eq!(delete.status.code(), Some(2), "{id}: {}", stderr(&delete));
    }
    let call = node.cli(&[
        "tools",
        "call",
        "skills.list_skills",
        "--conversation",
        "cadre.audit",
    ]);
    assert_ne!(call.status.code(), Some(0), "{}", stderr(&call));

    // Reads stay allowed, and the audit log holds only what the node writes there: lifecycle
    // events and its records of API calls (the refused ones with their status).
    let audit_after = log(&node, "cadre.audit");
    assert!(audit_after.len() >= audit_before.len());
    assert!(
        audit_after
            .iter()
            .all(|e| e["type"] == "actor_lifecycle" || e["type"] == "api_call"),
        "only the node's own events: {audit_after:?}"
    );
    assert!(!conversations(&node).contains(&"cadre.mine".to_string()));
}

#[test]
fn conversation_ids_are_checked_and_a_fork_names_the_last_event_it_keeps() {
    let node = Node::start("version: v1\n");
    let long = "x".repeat(5000);
    for (id, why) in [
        ("a b", "` ` is not allowed"),
        ("a/b", "`/` is not allowed"),
        (long.as_str(), "5000 characters, at most 200"),
    ] {
        let out = node.exec_echo(id, "hi");
        assert_eq!(out.status.code(), Some(2), "{id:.20}: {}", stderr(&out));
        let message = stderr(&out);
        assert!(
            message.contains("--conversation:") && message.contains(why),
            "{id:.20}: {message}"
        );
    }
    let out = node.cli(&["exec", "--agent", "", "--input", "hi"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--agent: missing"),
        "{}",
        stderr(&out)
    );
    assert!(conversations(&node).is_empty(), "nothing was written");

    assert!(node.exec_echo("src", "one").status.success());
    let zero = node.cli(&[
        "fork",
        "--conversation",
        "src",
        "--at-seq",
        "0",
        "--to",
        "zero",
    ]);
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
    assert!(
        stderr(&zero).contains("--at-seq: must be ≥ 1"),
        "{}",
        stderr(&zero)
    );
    assert!(!conversations(&node).contains(&"zero".to_string()));
    // Messages name the flags the user typed, not the request's fields.
    let past = node.cli(&["exec", "--conversation", "src", "--last-seq", "999"]);
    assert_ne!(past.status.code(), Some(0));
    assert!(
        stderr(&past).contains("--last-seq 999 is beyond the end"),
        "{}",
        stderr(&past)
    );

    // Without --at-seq the branch keeps all the conversation has (the CLI names its last seq).
    let all = node.cli(&["fork", "--conversation", "src", "--to", "all", "-o", "json"]);
    assert!(all.status.success(), "{}", stderr(&all));
    let branch: Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(branch["forked_at_seq"], 4, "{branch}");
    assert_eq!(
        log(&node, "all").len(),
        5,
        "the exec's four events and the Forked one"
    );
}

/// Runs the CLI with `args`, killing it if it has not ended after `limit`.
fn cli_within(args: &[&str], limit: std::time::Duration) -> (Option<i32>, String, bool) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(cadre_tests::cadre_bin())
        .args(args)
        .env_remove("CADRE_SERVER")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cadre");
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err, true);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, String::new(), false);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_client_gives_up_on_a_silent_address_and_says_what_is_wrong() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    // Not an address: a usage error.
    let (code, err, _) = cli_within(&["tree", "--server", "not a url"], Duration::from_secs(30));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--server"), "{err}");

    // A listener that never answers (the kernel completes the TCP handshake; nobody accepts).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let (code, err, ended) = cli_within(
        &["tree", "--server", &addr, "--timeout", "1"],
        Duration::from_secs(30),
    );
    assert!(ended, "cadre tree hung on a silent address");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no answer from") && err.contains(&addr),
        "{err}"
    );
    drop(silent);

    // A server that is not cadre's (it speaks HTTP/1.1 and hangs up).
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let addr = other.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let serving = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match other.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn
                            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };
    let (code, err, ended) = cli_within(&["tree", "--server", &addr], Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    serving.join().unwrap();
    assert!(ended, "cadre tree hung on a server that is not cadre's");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not speak cadre's API"), "{err}");
}
