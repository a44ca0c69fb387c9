//! Untrusted work cannot hurt the node: what a tool in a conversation's workspace tries, as an
//! attacker would (`cadre tools call workspace.run --approve …`), against real gVisor
//! sandboxes. Reads and writes outside the workspace, the network, other tenants and the node
//! itself are out of reach; filling the disk, memory or the process table, and spinning the
//! CPU, stay inside the sandbox's limits, which the error names; the node, the other
//! conversations and the log carry on as before.

use std::os::unix::fs::MetadataExt;

use cadre_tests::Node;
use serde_json::{Value, json};

/// A small node's sandboxes: the limits the tests run into.
const CONFIG: &str = "version: v1
sandbox:
  warm_pool: { min: 2, max: 8 }
  memory_mib: 256
  pids: 128
  workspace_mib: 64
  cpus: 0.5
";

/// A workspace tool's call in `conversation`: whether it failed, its text, its structured
/// result.
fn tool(node: &Node, conversation: &str, name: &str, args: Value) -> (bool, String, Value) {
    let args = args.to_string();
    let out = node.cli(&[
        "tools",
        "call",
        name,
        "--approve",
        "--conversation",
        conversation,
        "--args",
        &args,
        "-o",
        "json",
    ]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{name} {args}: no result: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (
        r["is_error"] == true,
        text,
        r["result"]["structuredContent"].clone(),
    )
}

/// `sh -c COMMAND` in `conversation`'s workspace (20 s at most): failed, text, exit code.
fn run(node: &Node, conversation: &str, command: &str) -> (bool, String, i64) {
    let (failed, text, s) = tool(
        node,
        conversation,
        "workspace.run",
        json!({"command": command, "timeout_ms": 20000}),
    );
    (failed, text, s["exit_code"].as_i64().unwrap_or(-1))
}

/// The node answers and runs an exec.
fn assert_healthy(node: &Node) {
    let out = node.exec_echo("health", "still here?");
    assert!(
        out.status.success(),
        "the node runs execs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn events(node: &Node, conversation: &str) -> Vec<Value> {
    node.json_lines(&["conversations", "log", conversation, "-o", "json"])
}

#[test]
fn nothing_outside_the_workspace_is_reachable() {
    let node = Node::start(CONFIG);
    let data = node.data.display().to_string();
    std::fs::write(node.data.join("secret-host.txt"), "host-secret").unwrap();
    let (failed, _, _) = tool(
        &node,
        "b",
        "workspace.write_file",
        json!({"path": "secret-b.txt", "content": "b's secret"}),
    );
    assert!(!failed);

    // Host paths, directly and through `..`, absolute paths and symlinks, in every workspace
    // tool.
    for command in [
        "cat /etc/shadow",
        "ls /root",
        "ls /home",
        &format!("ls {data}"),
        &format!("cat {data}/secret-host.txt"),
        "cat ../../../../etc/shadow",
        "ln -s /etc/shadow shadow && cat shadow",
        &format!("ln -s {data} data && ls data/"),
    ] {
        let (failed, text, code) = run(&node, "a", command);
        assert!(failed || code != 0, "`{command}` reached the host: {text}");
        assert!(
            !text.contains("host-secret") && !text.contains("root:"),
            "{command}: {text}"
        );
    }
    for (name, path) in [
        ("workspace.read_file", "../../../../etc/shadow"),
        ("workspace.read_file", "/etc/shadow"),
        ("workspace.read_file", "shadow"),
        ("workspace.list_files", "data"),
        ("workspace.list_files", ".."),
    ] {
        let (failed, text, _) = tool(&node, "a", name, json!({"path": path}));
        assert!(failed, "{name} {path} answered: {text}");
    }
    let (_, text, code) = run(
        &node,
        "a",
        "ln -s /usr/escape out && ln -s ../../../../tmp up-tmp",
    );
    assert_eq!(code, 0, "{text}");
    for path in ["../escape", "/etc/escape", "out", "up-tmp/escape"] {
        let (failed, text, _) = tool(
            &node,
            "a",
            "workspace.write_file",
            json!({"path": path, "content": "escaped"}),
        );
        assert!(
            failed || path == "up-tmp/escape",
            "write_file {path} answered: {text}"
        );
    }
    assert!(!node.data.join("workspaces/escape").exists());
    assert!(!std::path::Path::new("/usr/escape").exists());
    assert!(!std::path::Path::new("/etc/escape").exists());
    assert!(
        !std::path::Path::new("/tmp/escape").exists(),
        "a write through a symlink stays in the sandbox"
    );
    // A symlink out of the workspace resolves inside the sandbox: its root, not the host's.
    let (failed, text, _) = run(&node, "a", "ln -s ../../../../.. up && ls up/");
    assert!(!failed, "{text}");
    for host_only in ["root\n", "home\n", "var\n", "work\n"] {
        assert!(!text.contains(host_only), "the host's / is visible: {text}");
    }
    // Another tenant's workspace and the host's files are nowhere in the sandbox.
    let (_, found, _) = run(
        &node,
        "a",
        "find / -path /proc -prune -o -path /usr -prune -o -name 'secret-*' -print",
    );
    assert_eq!(found.trim(), "", "found: {found}");

    // Writes outside the workspace fail, or stay in the sandbox's own memory.
    for command in [
        "touch /usr/x",
        "touch /bin/x",
        "mkdir /etc/x",
        "touch /cadre/x",
    ] {
        let (failed, text, code) = run(&node, "a", command);
        assert!(failed || code != 0, "`{command}` wrote outside: {text}");
    }
    let canary = format!("/tmp/cadre-escape-{}", std::process::id());
    let (_, text, code) = run(&node, "a", &format!("echo x > {canary}"));
    assert_eq!(code, 0, "{text}");
    assert!(
        !std::path::Path::new(&canary).exists(),
        "the sandbox's /tmp is its own"
    );

    // The network: the node's API, another loopback port, the outside world.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = listener.local_addr().unwrap().port();
    let api = node.addr.rsplit(':').next().unwrap().to_string();
    for (host, port) in [
        ("127.0.0.1", api.as_str()),
        ("127.0.0.1", &other.to_string()),
        ("1.1.1.1", "53"),
    ] {
        let connect =
            format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}' && echo connected");
        let (_, text, _) = run(&node, "a", &connect);
        assert!(
            !text.contains("connected"),
            "{host}:{port} reachable: {text}"
        );
    }
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "nothing came through");

    // Raw sockets, mounts, namespaces and signals reach nothing of the host: the sandbox's
    // kernel is gVisor's, and its processes are its own.
    let raw = "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_RAW, \
               socket.IPPROTO_ICMP); s.sendto(b'\\x08\\x00\\xf7\\xff\\x00\\x00\\x00\\x00', \
               ('1.1.1.1', 0)); print('sent')\"";
    let (_, text, _) = run(&node, "a", raw);
    assert!(!text.contains("sent"), "a raw packet left: {text}");
    let mounts_before = host_mounts();
    run(
        &node,
        "a",
        "mkdir -p m && mount -t tmpfs none m; unshare -m -r true; echo done",
    );
    assert_eq!(
        host_mounts(),
        mounts_before,
        "the host's mounts did not change"
    );
    let (_, text, _) = run(
        &node,
        "a",
        &format!("kill -9 {} ; ls /proc | grep -c '^[0-9]'", node.pid()),
    );
    let pids: usize = text
        .lines()
        .last()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(pids < 20, "the sandbox sees only its own processes: {text}");
    assert!(cadre_tests::alive(node.pid()), "the node was not signalled");
    assert_healthy(&node);
}

#[test]
fn exhaustion_is_contained_named_and_loses_nothing() {
    let node = Node::start(CONFIG);
    assert!(node.exec_echo("keep", "before").status.success());
    let kept = events(&node, "keep");

    // Disk: the quota stops the write, names itself, and the node's disk holds at most it.
    let (failed, text, _) = run(&node, "disk", "dd if=/dev/zero of=big bs=64k count=3200");
    assert!(failed, "{text}");
    assert!(
        text.starts_with("workspace quota 64 MiB exceeded"),
        "{text}"
    );
    let (failed, text, _) = tool(
        &node,
        "disk",
        "workspace.write_file",
        json!({"path": "more.txt", "content": "x".repeat(100_000)}),
    );
    assert!(
        failed && text.contains("workspace quota 64 MiB exceeded"),
        "{text}"
    );
    let on_disk: u64 = std::fs::read_dir(node.data.join("workspaces"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".disk"))
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .max()
        .unwrap();
    assert!(
        on_disk <= 64 << 20,
        "a workspace takes {on_disk} bytes of the node's disk"
    );
    let (failed, text, _) = run(
        &node,
        "disk",
        "rm big && echo ok > after.txt && cat after.txt",
    );
    assert!(!failed && text == "ok\n", "room again once freed: {text}");

    // Memory: the sandbox is killed, and the caller, the audit log and `sandboxes ls` say why.
    let (failed, text, _) = run(
        &node,
        "memory",
        "head -c 600000000 /dev/zero > /tmp/fill; echo survived",
    );
    assert!(failed, "{text}");
    assert!(
        text.starts_with("sandbox sbx-") && text.ends_with(" killed: memory limit 256 MiB"),
        "{text}"
    );
    let ended = node.json_lines(&["sandboxes", "ls", "-o", "json"]);
    assert!(
        ended
            .iter()
            .any(|s| s["state"] == "ended" && s["ended"] == "killed: memory limit 256 MiB"),
        "{ended:#?}"
    );
    let audit = events(&node, "cadre.audit");
    assert!(
        audit.iter().any(|e| e["type"] == "sandbox_exited"
            && e["tenant"] == "conversation.memory"
            && e["reason"] == "killed: memory limit 256 MiB"),
        "{audit:#?}"
    );

    // Processes: a fork bomb takes its own sandbox down, named.
    let (failed, text, _) = run(&node, "forks", "f() { f | f & }; f; sleep 10");
    assert!(
        failed && text.ends_with(" killed: pids limit 128"),
        "{text}"
    );

    // CPU: a spin at its limit leaves the node serving.
    let spinner = {
        let addr = node.addr.clone();
        std::thread::spawn(move || {
            cadre_tests::cli_with_server(
                &addr,
                &[
                    "tools",
                    "call",
                    "workspace.run",
                    "--approve",
                    "--conversation",
                    "spin",
                    "--args",
                    r#"{"command":"timeout 5 sh -c 'while :; do :; done'; echo spun","timeout_ms":20000}"#,
                ],
            )
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_healthy(&node);
    let spun = spinner.join().unwrap();
    assert!(String::from_utf8_lossy(&spun.stdout).contains("spun"));

    // Nothing was lost: the other conversations carry on, their logs as they were.
    assert_eq!(events(&node, "keep"), kept);
    assert!(node.exec_echo("keep", "after").status.success());
    let (failed, text, _) = run(&node, "memory", "echo back");
    assert!(
        !failed && text == "back\n",
        "a killed workspace's sandbox starts again: {text}"
    );
}

#[test]
fn a_node_short_of_disk_refuses_new_workspaces_and_says_why() {
    let node = Node::start(
        "version: v1\nsandbox:\n  warm_pool: { min: 0, max: 2 }\n  min_free_disk_mib: 1000000000\n",
    );
    let out = node.cli(&[
        "tools",
        "call",
        "workspace.write_file",
        "--conversation",
        "c",
        "--args",
        r#"{"path":"a","content":"b"}"#,
    ]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("below sandbox.min_free_disk_mib"), "{said}");
    assert!(
        !node.data.join("workspaces").exists()
            || std::fs::read_dir(node.data.join("workspaces"))
                .unwrap()
                .next()
                .is_none(),
        "no workspace was made"
    );
    assert_healthy(&node);
}

#[test]
fn what_agents_run_all_day_works_in_a_sandbox() {
    let node = Node::start("version: v1\nsandbox:\n  warm_pool: { min: 1, max: 2 }\n");
    let (failed, text, code) = run(
        &node,
        "tools",
        "ls /usr /tmp \"$PWD\" >/dev/null && stat -c %F /usr/bin/env && \
         find /usr/lib/python3.* -maxdepth 1 -name json -printf '%f\\n' && \
         git init -q repo && cd repo && echo x > f && git add f && \
         git -c user.name=t -c user.email=t@localhost commit -qm first && \
         echo y >> f && git status --porcelain && cd .. && \
         python3 -m venv venv && venv/bin/python -c 'print(6 * 7)'",
    );
    assert!(!failed && code == 0, "{text}");
    assert_eq!(
        text, "regular file\njson\n M f\n42\n",
        "ls, stat, find, git status and python3 -m venv"
    );
}

/// The host's mount points, but the node's workspaces themselves (the pool mounts them as
/// sandboxes start).
fn host_mounts() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // Workspace filesystems (`…/workspaces/ID`) come and go with the sandboxes of this node
    // and of the tests running beside it; they are not what is checked.
    let in_workspaces = |p: &str| {
        std::path::Path::new(p)
            .parent()
            .is_some_and(|d| d.file_name().is_some_and(|n| n == "workspaces"))
    };
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| !in_workspaces(p))
        .collect();
    points.sort();
    points
}
