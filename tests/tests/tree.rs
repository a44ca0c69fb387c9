//! `cadre serve` + `cadre tree` from the outside: real binary, real gRPC, real processes.

use std::time::Duration;

use cadre_tests::{Node, alive, cli, find, pid_of};
use serde_json::Value;

const REST_FOR_ONE: &str = r#"
version: v1
supervisor:
  strategy: one_for_one
  children:
    - id: group
      supervisor:
        strategy: rest_for_one
        intensity: 5
        children:
          - { id: first, process: { command: [sleep, "1000"] } }
          - { id: middle, process: { command: [sleep, "1000"] } }
          - { id: last, process: { command: [sleep, "1000"] } }
"#;

fn restarts(tree: &Value, path: &str) -> u64 {
    find(tree, path)["restarts"].as_u64().unwrap()
}

#[test]
fn sigkill_middle_of_rest_for_one_restarts_it_and_the_one_after() {
    let node = Node::start(REST_FOR_ONE);
    let before = node.tree();
    let [first, middle, last] =
        ["first", "middle", "last"].map(|c| pid_of(&before, &format!("root/group/{c}")));
    assert!(alive(first) && alive(middle) && alive(last));

    unsafe { libc::kill(middle as i32, libc::SIGKILL) };
    let after = node.wait_tree("middle restarted", Duration::from_secs(10), |t| {
        restarts(t, "root/group/last") == 1
    });
    assert_eq!(
        pid_of(&after, "root/group/first"),
        first,
        "first keeps its pid"
    );
    assert_ne!(pid_of(&after, "root/group/middle"), middle);
    assert_ne!(pid_of(&after, "root/group/last"), last);
    assert_eq!(restarts(&after, "root/group/first"), 0);
    assert_eq!(restarts(&after, "root/group/middle"), 1);
    assert!(!alive(middle) && !alive(last), "the old processes are gone");
    for c in ["first", "middle", "last"] {
        assert_eq!(
            find(&after, &format!("root/group/{c}"))["status"],
            "running"
        );
    }

    // Every lifecycle change is in the audit log, durably.
    let mut node = node;
    assert!(node.stop(libc::SIGTERM).success());
    let audit = cadre_tests::audit_log(&node.dir.path().join("data"));
    let killed = audit
        .iter()
        .position(|(path, change, reason)| {
            path == "root/group/middle" && change == "exited" && reason == "killed"
        })
        .unwrap_or_else(|| panic!("no audited kill in {audit:#?}"));
    let restarted: Vec<_> = audit[killed..]
        .iter()
        .filter(|(_, change, _)| change == "started")
        .map(|(path, _, _)| path.as_str())
        .collect();
    assert_eq!(restarted[..2], ["root/group/middle", "root/group/last"]);
    assert!(
        audit
            .iter()
            .any(|(p, c, _)| p == "root/group/first" && c == "terminated"),
        "shutdown is audited"
    );
}

#[test]
fn tree_json_has_the_contract_shape() {
    let node = Node::start(REST_FOR_ONE);
    let both = node.tree();
    let keys: Vec<_> = both.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["root", "system"]);
    assert_eq!(both["system"]["path"], "system");
    let tree = &both["root"];
    let keys: Vec<_> = tree.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["path", "kind", "status", "restarts", "strategy", "children"]
    );
    assert_eq!(tree["path"], "root");
    assert_eq!(tree["kind"], "supervisor");
    assert_eq!(tree["strategy"], "one_for_one");
    let group = find(tree, "root/group");
    assert_eq!(group["strategy"], "rest_for_one");
    let paths: Vec<_> = group["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["root/group/first", "root/group/middle", "root/group/last"],
        "start order"
    );
    let first = find(tree, "root/group/first");
    assert_eq!(first["kind"], "process");
    assert!(first.get("strategy").is_none());
    assert!(first["pid"].as_u64().is_some());

    let text = node.cli(&["tree"]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.starts_with("root  [supervisor one_for_one]  running  restarts=0"),
        "{text}"
    );
    assert!(
        text.contains("└─ group  [supervisor rest_for_one]"),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid={}", pid_of(tree, "root/group/middle"))),
        "{text}"
    );
    assert!(
        text.contains("\nsystem  [supervisor one_for_one]  running")
            && text.contains("├─ controller  [system]")
            && text.contains("└─ agents  [supervisor one_for_one]"),
        "the node's own tree after the config's: {text}"
    );
}

#[test]
fn sigterm_shuts_the_tree_down_in_reverse_start_order() {
    let dir = cadre_tests::TempDir::new("order");
    let trail = dir.path().join("trail");
    let child = |name: &str| {
        format!(
            "          - id: {name}\n            process: {{ command: [sh, -c, \"trap 'echo {name} >> {t}; exit 0' TERM; touch {t}-{name}; while :; do sleep 0.05; done\"] }}\n",
            t = trail.display()
        )
    };
    let config = format!(
        "version: v1\nsupervisor:\n  children:\n    - id: g\n      supervisor:\n        children:\n{}{}{}",
        child("one"),
        child("two"),
        child("three")
    );
    let mut node = Node::start(&config);
    // Each shell reports once its trap is set (a SIGTERM before that would skip the trail).
    for name in ["one", "two", "three"] {
        while !dir.path().join(format!("trail-{name}")).exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let tree = node.tree();
    let pids: Vec<u32> = ["one", "two", "three"]
        .iter()
        .map(|c| pid_of(&tree, &format!("root/g/{c}")))
        .collect();
    let status = node.stop(libc::SIGTERM);
    assert!(
        status.success(),
        "clean shutdown exits 0: {status:?}\n{}",
        node.log()
    );
    assert_eq!(
        std::fs::read_to_string(&trail).unwrap(),
        "three\ntwo\none\n"
    );
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "no process outlives the node"
    );
}

#[test]
fn a_child_ignoring_sigterm_is_killed_at_its_shutdown_timeout() {
    let dir = cadre_tests::TempDir::new("stubborn");
    let ready = dir.path().join("ready");
    let mut node = Node::start(&format!(
        "version: v1\nsupervisor:\n  children:\n    - id: stubborn\n      shutdown: 300\n      process: {{ command: [sh, -c, \"trap '' TERM; touch {}; while :; do sleep 0.05; done\"] }}\n",
        ready.display()
    ));
    // SIGTERM before the shell has set its trap would kill it at once.
    while !ready.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = pid_of(&node.tree(), "root/stubborn");
    let t = std::time::Instant::now();
    assert!(node.stop(libc::SIGTERM).success());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(!alive(pid));
}

#[test]
fn a_root_that_gives_up_is_reported_and_the_node_serves_on() {
    // On a node with no config, a spawned child that keeps failing exhausts the root's
    // intensity (1 in 5 s).
    let mut node = Node::start("version: v1\n");
    let dir = cadre_tests::TempDir::new("crashy");
    let spec = dir.path().join("crashy.yaml");
    std::fs::write(
        &spec,
        "id: crashy\nprocess: { command: [sh, -c, \"exit 3\"] }\n",
    )
    .unwrap();
    let out = node.cli(&["actors", "spawn", "-f", spec.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = node.wait_tree("the root gave up", Duration::from_secs(20), |t| {
        find(t, "root")["status"] == "stopped"
    });
    assert_eq!(find(&tree, "system/controller")["status"], "running");
    assert_eq!(find(&tree, "system/agents")["status"], "running");

    // The API and the controller stay up: execs work, and the audit log has the story.
    let out = node.exec_echo("after", "still here");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = node.json_lines(&["conversations", "log", "cadre.audit", "-o", "json"]);
    let said = |path: &str, change: &str| {
        audit
            .iter()
            .any(|e| e["path"] == path && e["change"] == change)
    };
    assert!(said("root/crashy", "exited"), "{audit:#?}");
    assert!(said("root", "escalated"), "{audit:#?}");
    assert!(
        node.log().contains("reached_max_restart_intensity"),
        "{}",
        node.log()
    );
    // Spawning under the stopped root is refused; the node still stops cleanly.
    let out = node.cli(&["actors", "spawn", "-f", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(node.stop(libc::SIGTERM).success(), "{}", node.log());
}

#[test]
fn config_errors_exit_2_with_file_line_and_column() {
    let dir = cadre_tests::TempDir::new("bad");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "version: v1\nsupervisor:\n  strategy: one_for_none\n",
    )
    .unwrap();
    for cmd in [
        vec!["config", "check"],
        vec!["serve", "--listen", "127.0.0.1:0", "--config"],
    ] {
        let mut args = cmd.clone();
        args.push(file.to_str().unwrap());
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}:3:13: supervisor.strategy: unknown strategy `one_for_none`",
                file.display()
            )),
            "{cmd:?}: {err}"
        );
    }
    let ok = cli(&[
        "config",
        "check",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cadre.yaml"),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn tree_without_a_node_says_how_to_start_one() {
    let out = cadre_tests::cli_with_server("http://127.0.0.1:1", &["tree"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no cadre node at http://127.0.0.1:1: connection refused"),
        "{err}"
    );
    assert!(err.contains("cadre serve"), "{err}");
}

#[test]
fn the_api_speaks_grpc_to_a_plain_tonic_client() {
    let node = Node::start(REST_FOR_ONE);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let trees = rt.block_on(async {
        let mut client =
            cadre_proto::v1::actors_client::ActorsClient::connect(format!("http://{}", node.addr))
                .await
                .unwrap();
        client
            .tree(cadre_proto::v1::TreeRequest::default())
            .await
            .unwrap()
            .into_inner()
    });
    let root = trees.root.unwrap();
    assert_eq!(root.path, "root");
    let paths: Vec<_> = root.children.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["root/group"], "only the config's actors");
    assert_eq!(root.children[0].children.len(), 3);
    assert!(root.children[0].children.iter().all(|c| c.pid.is_some()));
    let system = trees.system.unwrap();
    let paths: Vec<_> = system.children.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        ["system/controller", "system/agents"],
        "the node's own actors, in a tree of their own"
    );
    assert_eq!(system.children[0].kind, "system");
    assert_eq!(system.children[1].kind, "supervisor");
}

#[test]
fn process_output_goes_to_the_node_log_with_the_actor_path() {
    let node = Node::start(
        "version: v1\nsupervisor:\n  children:\n    - id: talker\n      process: { command: [sh, -c, \"echo hello-from-talker; echo trouble-on-stderr >&2; exec sleep 1000\"] }\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let has = |needle: &str| {
        node.log()
            .lines()
            .any(|l| l.contains(needle) && l.contains("actor=root/talker"))
    };
    while !(has("hello-from-talker") && has("trouble-on-stderr")) {
        assert!(std::time::Instant::now() < deadline, "log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        has("stream=\"stdout\"") && has("stream=\"stderr\""),
        "{}",
        node.log()
    );
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let node = Node::start("version: v1\n");
    let data = node.dir.path().join("data");
    let out = cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in use by another cadre node"), "{err}");
    assert!(err.contains(&format!("pid {}", node.pid())), "{err}");
}

#[test]
fn health_and_reflection_answer_like_grpcurl_expects() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let node = Node::start(REST_FOR_ONE);
    let url = format!("http://{}", node.addr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        for service in ["", "cadre.v1.Actors"] {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(
                status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{service:?}"
            );
        }

        let mut reflection = ServerReflectionClient::new(channel);
        let ask = |m: MessageRequest| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let requests = tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "cadre.v1.Actors".into(),
            )),
        ]);
        let mut answers = reflection
            .server_reflection_info(requests)
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        for want in [
            "cadre.v1.Actors",
            "cadre.v1.Conversations",
            "cadre.v1.Tools",
            "cadre.v1.Cluster",
            "grpc.health.v1.Health",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // Only what the node serves (issue 21): remote agents serve AgentService, sandboxes
        // serve Worker.
        for unserved in ["cadre.v1.AgentService", "cadre.v1.Worker"] {
            assert!(
                !names.contains(&unserved),
                "{unserved} advertised: {names:?}"
            );
        }
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected file descriptors");
        };
        let file = <prost_types_shim::FileDescriptorProto as prost::Message>::decode(
            files.file_descriptor_proto[0].as_slice(),
        )
        .unwrap();
        assert_eq!(file.name, "cadre/v1/actors.proto");
        assert_eq!(file.package, "cadre.v1");
    });
}

/// Just the fields of `google.protobuf.FileDescriptorProto` this test reads.
mod prost_types_shim {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub package: String,
    }
}

#[test]
fn tree_watch_streams_lifecycle_changes_as_json_lines() {
    use std::io::{BufRead, BufReader};
    let node = Node::start(REST_FOR_ONE);
    let mut watch = std::process::Command::new(cadre_tests::cadre_bin())
        .args(["tree", "--watch", "-o", "json"])
        .env("CADRE_SERVER", &node.addr)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The watcher subscribes asynchronously: kill the middle process until it reports.
    let mut seen: Vec<(String, String, String)> = Vec::new();
    for _attempt in 0..10 {
        let middle = pid_of(&node.tree(), "root/group/middle");
        unsafe { libc::kill(middle as i32, libc::SIGKILL) };
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            let v: Value = serde_json::from_str(&line).expect("each line is JSON");
            assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
            seen.push((
                v["path"].as_str().unwrap().to_string(),
                v["change"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap_or("").to_string(),
            ));
        }
        if seen.iter().any(|(_, c, _)| c == "exited") {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let from = seen
        .iter()
        .position(|(_, c, _)| c == "exited")
        .expect("the watcher saw the kill");
    let seen = &seen[from..];
    let want = [
        ("root/group/middle", "exited", "killed"),
        ("root/group/last", "terminated", ""),
        ("root/group/middle", "restarting", ""),
        ("root/group/last", "restarting", ""),
        ("root/group/middle", "started", ""),
        ("root/group/last", "started", ""),
    ];
    let got: Vec<_> = seen
        .iter()
        .take(6)
        .map(|(p, c, r)| (p.as_str(), c.as_str(), r.as_str()))
        .collect();
    assert_eq!(got, want);
}

/// examples/cadre.yaml with its skills' paths made absolute (the test node's config is
/// written elsewhere, and relative paths are relative to the config's folder).
fn example_config() -> String {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    std::fs::read_to_string(format!("{examples}/cadre.yaml"))
        .unwrap()
        .replace("path: skills/", &format!("path: {examples}/skills/"))
}

#[test]
fn a_sigkilled_node_leaves_no_process_running_and_its_restart_runs_each_once() {
    let config = example_config();
    let mut first = Node::start(&config);
    let running = |node: &Node| {
        node.wait_tree("the example's processes", Duration::from_secs(60), |t| {
            [
                "root/pipeline/source",
                "root/pipeline/transform",
                "root/pipeline/sink",
            ]
            .iter()
            .all(|p| find(t, p)["status"] == "running")
                && find(t, "root/tools/everything")["status"] == "running"
        })
    };
    running(&first);
    let before = cadre_tests::descendants(first.pid());
    let sleeps = |procs: &[(u32, String)]| {
        procs
            .iter()
            .filter(|(_, cmd)| cmd == "sleep infinity")
            .count()
    };
    assert_eq!(sleeps(&before), 2, "{before:#?}");
    assert!(
        before.iter().any(|(_, cmd)| cmd.contains("sleep 30")),
        "the source's own child runs: {before:#?}"
    );

    first.stop(libc::SIGKILL);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<_> = before
            .iter()
            .filter(|(pid, _)| cadre_tests::running(*pid))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left running by the killed node: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let second = Node::start_with_data(&config, &first.data);
    running(&second);
    let after = cadre_tests::descendants(second.pid());
    assert_eq!(
        sleeps(&after),
        2,
        "each configured process once: {after:#?}"
    );
}
