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

    // Restart: a new process.
    let restarted = json(&node.cli(&["actors", "restart", "root/web", "-o", "json"]));
    assert_eq!(
        (restarted["status"].as_str(), restarted["restarts"].as_u64()),
        (Some("running"), Some(1))
    );
    let new_pid = restarted["pid"].as_u64().unwrap() as u32;
    assert!(new_pid != pid && alive(new_pid));
    assert!(!alive(pid));
    // The supervisor supervises it like any configured child.
    unsafe { libc::kill(new_pid as i32, libc::SIGKILL) };
    node.wait_tree("web restarted", Duration::from_secs(10), |t| {
        find(t, "root/web")["restarts"] == 2
    });

    // Stopping a configured child keeps its spec: it can be restarted.
    let first = pid_of(&node.tree(), "root/group/first");
    let stopped = json(&node.cli(&["actors", "stop", "root/group/first", "-o", "json"]));
    assert_eq!(stopped["status"], "stopped");
    assert!(stopped.get("pid").is_none());
    assert!(!alive(first));
    let back = json(&node.cli(&["actors", "restart", "root/group/first", "-o", "json"]));
    assert_eq!(back["status"], "running");

    // Stopping a spawned child removes it for good.
    let current = pid_of(&node.tree(), "root/web");
    let stopped = json(&node.cli(&["actors", "stop", "root/web", "-o", "json"]));
    assert_eq!(stopped["status"], "deleted");
    assert!(!alive(current));
    let out = node.cli(&["actors", "restart", "root/web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no actor `root/web`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn spawned_actors_come_back_after_a_restart_in_order_until_stopped() {
    let mut first = Node::start("version: v1\n");
    let dir = TempDir::new("spawned");
    let spec = |name: &str, yaml: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        file.to_str().unwrap().to_string()
    };
    let sleeper = spec(
        "sleeper",
        "id: sleeper\nprocess: { command: [sleep, \"1000\"] }\n",
    );
    let group = spec("grp", "id: grp\nsupervisor: { strategy: one_for_all }\n");
    let inner = spec(
        "inner",
        "id: inner\nprocess: { command: [sleep, \"1001\"] }\n",
    );
    let gone = spec(
        "gone",
        "id: gone\nprocess: { command: [sleep, \"1002\"] }\n",
    );
    for args in [
        vec!["actors", "spawn", "-f", &sleeper],
        vec!["actors", "spawn", "-f", &group],
        vec!["actors", "spawn", "-f", &inner, "--parent", "root/grp"],
        vec!["actors", "spawn", "-f", &gone],
        vec!["actors", "stop", "root/gone"],
    ] {
        let out = first.cli(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let before = first.tree();
    let old_pids = [
        pid_of(&before, "root/sleeper"),
        pid_of(&before, "root/grp/inner"),
    ];

    // SIGKILL: the node's processes die with it, and the restart starts each spawned actor
    // once, in spawn order, under its parent; the stopped one stays gone.
    first.stop(libc::SIGKILL);
    let mut second = Node::start_with_data("version: v1\n", &first.data);
    let tree = second.tree();
    let children = |t: &Value, path: &str| -> Vec<String> {
        find(t, path)["children"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(children(&tree, "root"), ["root/sleeper", "root/grp"]);
    assert_eq!(children(&tree, "root/grp"), ["root/grp/inner"]);
    assert_eq!(find(&tree, "root/grp")["strategy"], "one_for_all");
    for pid in old_pids {
        assert!(
            !cadre_tests::running(pid),
            "{pid} of the killed run still runs"
        );
    }
    let sleeps: Vec<_> = cadre_tests::descendants(second.pid())
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with("sleep 100"))
        .map(|(_, cmd)| cmd)
        .collect();
    assert_eq!(sleeps.len(), 2, "each once: {sleeps:?}");

    // Stopped for good: not there after the next restart either.
    let out = second.cli(&["actors", "stop", "root/grp"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(second.stop(libc::SIGTERM).success());
    let third = Node::start_with_data("version: v1\n", &first.data);
    assert_eq!(children(&third.tree(), "root"), ["root/sleeper"]);
    let record = third.json_lines(&["conversations", "log", "cadre.actors", "-o", "json"]);
    let said: Vec<(String, String)> = record
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["path"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected = [
        ("actor_spawned", "root/sleeper"),
        ("actor_spawned", "root/grp"),
        ("actor_spawned", "root/grp/inner"),
        ("actor_spawned", "root/gone"),
        ("actor_removed", "root/gone"),
        ("actor_removed", "root/grp"),
    ];
    assert_eq!(
        said,
        expected.map(|(t, p)| (t.to_string(), p.to_string())),
        "{record:#?}"
    );
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
            "{}:2:10: restart: unknown restart `sometimes`",
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

#[test]
fn an_actor_is_described_and_its_output_read_and_followed() {
    let node = Node::start(
        "version: v1\nsupervisor:\n  children:\n    - id: talker\n      shutdown: 700\n      process: { command: [sh, -c, \"i=0; while :; do i=$((i+1)); echo line $i; echo oops $i >&2; sleep 0.1; done\"] }\n",
    );
    let pid = pid_of(&node.tree(), "root/talker");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    node.wait_tree("talker restarted", Duration::from_secs(10), |t| {
        find(t, "root/talker")["restarts"] == 1
    });

    // get: the supervision terms, the last exit and when.
    let got = json(&node.cli(&["actors", "get", "root/talker", "-o", "json"]));
    assert_eq!(
        (&got["restart"], &got["shutdown"], &got["significant"]),
        (
            &Value::from("permanent"),
            &Value::from("700"),
            &Value::from(false)
        ),
        "{got}"
    );
    assert_eq!(got["last_exit"]["reason"], "killed", "{got}");
    assert!(got["last_exit"]["time"].as_str().unwrap().ends_with('Z'));
    let text = node.cli(&["actors", "get", "root/talker"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Restart:     permanent"), "{text}");
    assert!(text.contains("Last exit:   killed at "), "{text}");
    let yaml = node.cli(&["actors", "get", "root/talker", "-o", "yaml"]);
    let yaml = String::from_utf8_lossy(&yaml.stdout);
    assert!(
        yaml.starts_with("---\npath: root/talker\nkind: process\n"),
        "{yaml}"
    );
    assert!(yaml.contains("last_exit:\n  reason: killed\n"), "{yaml}");

    // logs: both streams, the last N, as JSON lines; unknown actors are NotFound.
    std::thread::sleep(Duration::from_millis(500));
    let out = node.cli(&["actors", "logs", "root/talker", "--tail", "4", "-o", "json"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&json_ok(&out))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let streams: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|l| l["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["stderr", "stdout"].into(), "{lines:?}");
    let out = node.cli(&["actors", "logs", "root/talker"]);
    let all = String::from_utf8_lossy(&json_ok(&out)).into_owned();
    assert!(all.lines().any(|l| l.starts_with("line ")), "{all}");
    assert!(all.lines().any(|l| l.starts_with("oops ")), "{all}");
    let missing = node.cli(&["actors", "logs", "root/nobody"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no actor `root/nobody`"));

    // --follow: lines written after it started keep coming.
    let mut follow = std::process::Command::new(cadre_tests::cadre_bin())
        .args(["actors", "logs", "root/talker", "--follow", "--tail", "0"])
        .args(["--server", &node.addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..6 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        seen.push(line);
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert!(seen.iter().any(|l| l.starts_with("line ")), "{seen:?}");
    assert!(
        seen.iter().all(|l| !all.contains(l.as_str())),
        "only new lines: {seen:?}"
    );
}

fn json_ok(out: &std::process::Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

#[test]
fn a_python_client_spawns_watches_reads_and_stops_an_actor_with_a_typed_spec() {
    let node = Node::start("version: v1\n");
    let out = std::process::Command::new(cadre_tests::mcp_dir().join("grpc/bin/python3"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/spawn-python/spawn.py"
        ))
        .args(["--server", &node.addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("spawned root/sleeper: running, pid "),
        "{stdout}"
    );
    assert!(
        lines[1] == "refused: INVALID_ARGUMENT: spec.process: missing field `command`",
        "{stdout}"
    );
    assert!(
        lines.contains(&"watch: root/sleeper exited killed"),
        "{stdout}"
    );
    assert!(lines.contains(&"watch: root/sleeper started"), "{stdout}");
    assert!(
        lines.contains(&"get: root/sleeper running, restarts 1, last exit killed, restart permanent, shutdown 2000"),
        "{stdout}"
    );
    assert_eq!(
        lines.last(),
        Some(&"stopped root/sleeper: deleted"),
        "{stdout}"
    );
    // Nothing of it is left, and the refused spec changed nothing.
    let tree = node.tree();
    assert!(
        find(&tree, "root")["children"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{tree}"
    );
}

#[test]
fn a_typed_spec_is_checked_like_yaml_and_naming_its_fields() {
    use cadre_proto::v1::{ActorSpec, ProcessActor, SpawnRequest, SupervisorActor, actor_spec};
    let node = Node::start("version: v1\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spawn = |request: SpawnRequest| {
        rt.block_on(async {
            let mut client = cadre_proto::v1::actors_client::ActorsClient::connect(format!(
                "http://{}",
                node.addr
            ))
            .await
            .unwrap();
            client.spawn(request).await
        })
    };
    let process = |command: &[&str]| {
        Some(actor_spec::Actor::Process(ProcessActor {
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }))
    };
    let refused = |request: SpawnRequest| {
        let status = spawn(request).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status.message().to_string()
    };
    let bad_restart = ActorSpec {
        id: "a".into(),
        restart: "sometimes".into(),
        actor: process(&["sleep", "9"]),
        ..Default::default()
    };
    assert_eq!(
        refused(SpawnRequest {
            parent: "root".into(),
            spec: Some(bad_restart),
            ..Default::default()
        }),
        "spec.restart: unknown restart `sometimes` (expected permanent, transient or temporary)"
    );
    let nested = ActorSpec {
        id: "group".into(),
        actor: Some(actor_spec::Actor::Supervisor(SupervisorActor {
            children: vec![ActorSpec {
                id: "bad/id".into(),
                actor: process(&["sleep", "9"]),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    let message = refused(SpawnRequest {
        parent: "root".into(),
        spec: Some(nested),
        ..Default::default()
    });
    assert!(
        message.starts_with("spec.supervisor.children[0].id: "),
        "{message}"
    );
    assert!(
        refused(SpawnRequest {
            parent: "root".into(),
            ..Default::default()
        })
        .starts_with("spec: missing")
    );
    assert!(
        refused(SpawnRequest {
            parent: "root".into(),
            spec_yaml: "id: x\nprocess: { command: [true] }\n".into(),
            spec: Some(ActorSpec::default()),
            ..Default::default()
        })
        .contains("not both")
    );
    // A good one runs, with the config's defaults for what it leaves out.
    let good = ActorSpec {
        id: "fine".into(),
        actor: process(&["sleep", "1000"]),
        ..Default::default()
    };
    let node_info = spawn(SpawnRequest {
        parent: "root".into(),
        spec: Some(good),
        ..Default::default()
    })
    .unwrap()
    .into_inner();
    assert_eq!(
        (
            node_info.status.as_str(),
            node_info.restart.as_str(),
            node_info.shutdown.as_str()
        ),
        ("running", "permanent", "5000")
    );
}
