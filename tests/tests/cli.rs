//! What a user of kubectl expects of the CLI (issue 21): `cadre version` of client and server,
//! shell completion, long inputs from a file or stdin, a listen address by host name.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use cadre_tests::{Node, TempDir, cadre_bin};
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_names_client_and_server_and_completion_scripts_are_printed() {
    let node = Node::start("version: v1\n");
    let out = node.cli(&["version", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let client = v["client"]["version"].as_str().unwrap();
    assert!(!client.is_empty(), "{v}");
    assert_eq!(v["server"]["version"], client, "{v}");
    let out = node.cli(&["version", "--client"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("client: {client}")
    );

    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cadre"),
        ("fish", "complete -c cadre"),
    ] {
        let out = node.cli(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script:.200}");
        assert!(
            script.contains("conversations"),
            "{shell}: names the commands"
        );
    }
    let out = node.cli(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn an_input_longer_than_an_argument_comes_from_a_file_or_stdin() {
    let node = Node::start("version: v1\n");
    // Longer than one argument may be (128 KiB on Linux).
    let input: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let dir = TempDir::new("input");
    let file = dir.path().join("input.txt");
    std::fs::write(&file, &input).unwrap();
    let out = node.cli(&[
        "exec",
        "--agent",
        "echo",
        "--conversation",
        "long",
        "--input-file",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), input);

    let mut child = Command::new(cadre_bin())
        .args([
            "exec",
            "--agent",
            "echo",
            "--conversation",
            "piped",
            "--input",
            "-",
        ])
        .env("CADRE_SERVER", &node.addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "from stdin"
    );

    let out = node.cli(&[
        "exec",
        "--agent",
        "echo",
        "--input-file",
        "/nonexistent/input.txt",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/input.txt: not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_listens_on_a_host_name_and_names_a_bad_address_where_it_came_from() {
    let dir = TempDir::new("listen");
    let mut child = Command::new(cadre_bin())
        .args(["serve", "--listen", "localhost:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("CADRE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr_pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("cadre: listening on ") => break Some(line),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let listening = listening.expect("cadre serve --listen localhost:0 started");
    assert!(
        listening.contains("127.0.0.1:") || listening.contains("[::1]:"),
        "{listening}"
    );

    let config = dir.path().join("cadre.yaml");
    std::fs::write(&config, "version: v1\nnode:\n  listen: \"no-port\"\n").unwrap();
    let out = Command::new(cadre_bin())
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(":3:11: node.listen: `no-port`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_error_says_its_cause_once() {
    let node = Node::start("version: v1\n");
    let dir = TempDir::new("taken");
    let out = Command::new(cadre_bin())
        .args(["serve", "--listen", &node.addr, "--data-dir"])
        .arg(dir.path().join("data"))
        .env("CADRE_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains(&format!("cannot listen on {}", node.addr)),
        "{message}"
    );
    assert_eq!(
        message.matches("Address already in use").count(),
        1,
        "{message}"
    );
}

#[test]
fn a_request_over_the_message_limit_is_resource_exhausted_and_writes_nothing() {
    let node = Node::start("version: v1\napi:\n  max_message_bytes: 65536\n");
    let dir = TempDir::new("big");
    let file = dir.path().join("input.txt");
    std::fs::write(&file, "x".repeat(100_000)).unwrap();
    let out = node.cli(&[
        "exec",
        "--agent",
        "echo",
        "--conversation",
        "big",
        "--input-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("ResourceExhausted")
            && message.contains("65536 bytes (api.max_message_bytes)"),
        "{message}"
    );
    let list = node.cli(&["conversations", "ls", "-o", "json"]);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("\"big\""),
        "a refused exec writes nothing"
    );
    // Under the node's limit it goes through; over the client's it is refused before sending.
    std::fs::write(&file, "y".repeat(60_000)).unwrap();
    let out = node.cli(&[
        "exec",
        "--agent",
        "echo",
        "--conversation",
        "big",
        "--input-file",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = node.cli(&[
        "exec",
        "--agent",
        "echo",
        "--max-message-bytes",
        "10000",
        "--input-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--max-message-bytes"),
        "{}",
        stderr(&out)
    );

    let out = Command::new(cadre_bin())
        .args(["config", "check", "/dev/stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"version: v1\napi:\n  max_message_bytes: 10\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_watch_and_a_follow_end_cleanly_when_the_node_stops() {
    let mut node = Node::start("version: v1\n");
    let out = node.exec("echo", "f", "hi");
    assert!(out.status.success(), "{}", stderr(&out));
    let spawn = |args: &[&str]| {
        let mut child = Command::new(cadre_bin())
            .args(args)
            .env("CADRE_SERVER", &node.addr)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for its first line: it is connected and streaming.
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?} printed nothing");
        child
    };
    let watch = spawn(&["tree", "--watch"]);
    let follow = spawn(&["conversations", "log", "f", "--follow"]);
    node.stop(libc::SIGTERM);
    for (what, mut child) in [("tree --watch", watch), ("log --follow", follow)] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{what} did not end when the node stopped");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(status.success(), "{what}: {status:?}: {err}");
        assert!(err.contains("stopped;"), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    }
}

#[test]
fn relative_paths_in_a_config_are_its_folders_and_config_check_reads_them() {
    let dir = TempDir::new("relative");
    let examples = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/skills/csv-summary"
    );
    std::fs::create_dir_all(dir.path().join("skills")).unwrap();
    let copied = Command::new("cp")
        .args(["-r", examples])
        .arg(dir.path().join("skills/csv-summary"))
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    let script = dir.path().join("bin/hello.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    let status = Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
    let config = dir.path().join("cadre.yaml");
    std::fs::write(
        &config,
        "version: v1\nsupervisor:\n  children:\n    - id: csv\n      skill: { path: skills/csv-summary }\n    - id: hello\n      process: { command: [bin/hello.sh], cwd: bin }\n",
    )
    .unwrap();

    // From another directory: check passes, and the node finds both.
    let check_from_root = || {
        Command::new(cadre_bin())
            .current_dir("/")
            .args(["config", "check"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let check = check_from_root();
    assert!(check.status.success(), "{}", stderr(&check));
    let node = Node::start_from_file(&config);
    node.wait_tree("both running", Duration::from_secs(20), |t| {
        cadre_tests::find(t, "root/csv")["status"] == "running"
            && cadre_tests::find(t, "root/hello")["status"] == "running"
    });

    // What the node would fail to read at start fails the check, at its field.
    for (child, expected) in [
        (
            "    - id: gone\n      skill: { path: skills/gone }\n",
            format!(
                "{}:5:22: supervisor.children[0].skill.path: child `gone`: {}/skills/gone/SKILL.md: not found",
                config.display(),
                dir.path().display()
            ),
        ),
        (
            "    - id: gone\n      process: { command: [bin/gone.sh] }\n",
            format!(
                "{}:5:27: supervisor.children[0].process.command: child `gone`: program `{}/bin/gone.sh` not found",
                config.display(),
                dir.path().display()
            ),
        ),
    ] {
        std::fs::write(
            &config,
            format!("version: v1\nsupervisor:\n  children:\n{child}"),
        )
        .unwrap();
        let check = check_from_root();
        assert_eq!(check.status.code(), Some(2), "{}", stderr(&check));
        assert_eq!(stderr(&check).trim(), expected);
    }
}

#[test]
fn certs_init_makes_a_ca_node_and_client_certificate_and_show_reads_them() {
    let dir = TempDir::new("certs");
    let certs = dir.path().join("certs");
    let init = |extra: &[&str]| {
        Command::new(cadre_bin())
            .args(["certs", "init"])
            .arg(&certs)
            .args([
                "--host",
                "node-1.example",
                "--host",
                "10.1.2.3",
                "--days",
                "30",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = init(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let show = |file: &str| -> Value {
        let out = Command::new(cadre_bin())
            .args(["certs", "show", "-o", "json"])
            .arg(certs.join(file))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let node = show("node.crt");
    assert_eq!(
        node["names"],
        serde_json::json!(["node-1.example", "10.1.2.3"])
    );
    assert_eq!(node["issuer"], "CN=cadre CA, O=cadre");
    assert_eq!(
        (node["ca"].as_bool(), node["expired"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(show("ca.crt")["ca"], true);
    assert_eq!(show("client.crt")["subject"], "CN=cadre client, O=cadre");
    let mode = |f: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(certs.join(f)).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!((mode("node.key"), mode("node.crt")), (0o600, 0o644));

    // Nothing is replaced unless asked.
    let before = std::fs::read(certs.join("ca.crt")).unwrap();
    let again = init(&[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(certs.join("ca.crt")).unwrap(), before);
    assert!(init(&["--force"]).status.success());
    assert_ne!(std::fs::read(certs.join("ca.crt")).unwrap(), before);
    let missing = Command::new(cadre_bin())
        .args(["certs", "show"])
        .arg(dir.path().join("nope.crt"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("nope.crt: not found"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn health_answers_each_probe_and_fails_without_a_node() {
    let mut node = Node::start("version: v1\n");
    for probe in ["startup", "live", "ready"] {
        // Readiness is checked once a second: it may need a moment after the node listens.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = node.cli(&["health", probe, "-o", "json"]);
            if out.status.success() {
                let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(answer, serde_json::json!({"probe": probe, "ok": true}));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{probe}: {}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let addr = node.addr.clone();
    node.stop(libc::SIGTERM);
    let out = cadre_tests::cli_with_server(&addr, &["health", "live"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = cadre_tests::cli_with_server(&addr, &["health", "sideways"]);
    assert_eq!(out.status.code(), Some(2), "a probe that does not exist");
}
