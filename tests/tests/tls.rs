//! The API over TLS with real certificates from `cadre certs init`, on loopback: the CLI over
//! https with a CA file, clear errors for every mismatch, mutual TLS, and a certificate
//! rotated on disk served without a restart.

use std::path::Path;
use std::process::{Command, Output};

use cadre_tests::{Node, TempDir, cadre_bin, cli_with_server};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `cadre certs init DIR` (replacing what is there with `force`, for `hosts` if any).
fn certs(dir: &Path, force: bool) {
    certs_for(dir, force, &[]);
}

fn certs_for(dir: &Path, force: bool, hosts: &[&str]) {
    let mut cmd = Command::new(cadre_bin());
    cmd.args(["certs", "init"]).arg(dir);
    if force {
        cmd.arg("--force");
    }
    for host in hosts {
        cmd.args(["--host", host]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A node serving TLS from the certificates in `dir/certs` (mutual with `client_ca`).
fn tls_node(dir: &TempDir, client_ca: bool) -> Node {
    certs(&dir.path().join("certs"), false);
    let config = dir.path().join("cadre.yaml");
    let mutual = if client_ca {
        ", client_ca_file: certs/ca.crt"
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            "version: v1\napi:\n  tls: {{ cert_file: certs/node.crt, key_file: certs/node.key{mutual} }}\n"
        ),
    )
    .unwrap();
    Node::start_from_file(&config)
}

#[test]
fn the_cli_talks_to_a_tls_node_and_says_clearly_what_does_not_match() {
    let dir = TempDir::new("tls");
    let node = tls_node(&dir, false);
    let https = format!("https://{}", node.addr);
    let ca = dir.path().join("certs/ca.crt");
    let ca = ca.to_str().unwrap();

    let out = cli_with_server(&https, &["tree", "--ca-file", ca]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("root  [supervisor"));
    let out = cli_with_server(
        &https,
        &[
            "exec",
            "--agent",
            "echo",
            "--input",
            "over tls",
            "--ca-file",
            ca,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // grpcio with SSL credentials: health and Actors/Tree (raw messages, no stubs needed).
    let script = "import grpc, sys\n\
        creds = grpc.ssl_channel_credentials(open(sys.argv[2], 'rb').read())\n\
        channel = grpc.secure_channel(sys.argv[1], creds)\n\
        health = channel.unary_unary('/grpc.health.v1.Health/Check')(b'', timeout=10)\n\
        tree = channel.unary_unary('/cadre.v1.Actors/Tree')(b'', timeout=10)\n\
        print(health.hex(), b'root' in tree and b'system' in tree)\n";
    let out = Command::new(cadre_tests::mcp_dir().join("grpc/bin/python3"))
        .args(["-c", script, &node.addr, ca])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0801 True",
        "SERVING, and both trees"
    );

    // Plaintext to a TLS node, no CA, a wrong name: one line each that says what to do.
    let out = cli_with_server(&node.addr, &["tree"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the node serves TLS there; use https://"),
        "{}",
        stderr(&out)
    );
    let out = cli_with_server(&https, &["tree"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("certificate was refused: unknown issuer"),
        "{}",
        stderr(&out)
    );

    // The certificates replaced on disk (a new CA too): new connections get them, no restart.
    let old = dir.path().join("old-ca.crt");
    std::fs::copy(ca, &old).unwrap();
    certs(&dir.path().join("certs"), true);
    let out = cli_with_server(&https, &["tree", "--ca-file", ca]);
    assert!(out.status.success(), "rotated: {}", stderr(&out));
    let out = cli_with_server(&https, &["tree", "--ca-file", old.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "the old CA no longer fits");

    // A certificate for another name: the address the client used is not in it.
    certs_for(&dir.path().join("certs"), true, &["elsewhere.example"]);
    let out = cli_with_server(&https, &["tree", "--ca-file", ca]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("certificate was refused: name mismatch"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_of_its_ca() {
    let dir = TempDir::new("mtls");
    let node = tls_node(&dir, true);
    let https = format!("https://{}", node.addr);
    let certs = dir.path().join("certs");
    let path = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let out = cli_with_server(&https, &["tree", "--ca-file", &path("ca.crt")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("asks for a client certificate from its CA (give --cert and --key)"),
        "{}",
        stderr(&out)
    );
    let with = [
        "tree",
        "--ca-file",
        &path("ca.crt"),
        "--cert",
        &path("client.crt"),
        "--key",
        &path("client.key"),
    ];
    let out = cli_with_server(&https, &with);
    assert!(out.status.success(), "{}", stderr(&out));
    // A certificate of another CA is refused too.
    let other = dir.path().join("other");
    self::certs(&other, false);
    let (foreign_cert, foreign_key) = (other.join("client.crt"), other.join("client.key"));
    let foreign = [
        "tree",
        "--ca-file",
        &path("ca.crt"),
        "--cert",
        foreign_cert.to_str().unwrap(),
        "--key",
        foreign_key.to_str().unwrap(),
    ];
    let out = cli_with_server(&https, &foreign);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn tokens_are_not_sent_in_plaintext_beyond_loopback_and_tls_flags_need_https() {
    let out = cli_with_server("http://10.255.255.1:7400", &["tree", "--token", "secret"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("refusing to send it in plaintext to 10.255.255.1"),
        "{}",
        stderr(&out)
    );
    let out = cli_with_server("http://127.0.0.1:1", &["tree", "--ca-file", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("are for an https:// --server"),
        "{}",
        stderr(&out)
    );
    let out = cli_with_server(
        "https://127.0.0.1:1",
        &["tree", "--ca-file", "/nonexistent/ca.crt"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--ca-file: /nonexistent/ca.crt: not found"),
        "{}",
        stderr(&out)
    );
}

/// A `cadre worker --listen` process, killed when dropped.
struct TcpWorker {
    child: std::process::Child,
    addr: String,
}

impl Drop for TcpWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tcp_worker(workspace: &Path, certs: &Path) -> TcpWorker {
    use std::io::BufRead;
    let mut child = Command::new(cadre_bin())
        .arg("worker")
        .arg("--workspace")
        .arg(workspace)
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(certs.join("worker.crt"))
        .arg("--tls-key")
        .arg(certs.join("worker.key"))
        .arg("--client-ca")
        .arg(certs.join("ca.crt"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("cadre: worker listening on ")
        .unwrap_or_else(|| panic!("the worker said {line:?}"))
        .to_string();
    TcpWorker { child, addr }
}

#[test]
fn a_node_drives_a_worker_over_tcp_with_mutual_tls_and_refuses_or_is_refused_by_another_ca() {
    use cadre_proto::v1::{ReadFileRequest, WriteFileRequest};
    let dir = TempDir::new("tcp-worker");
    let certs = dir.path().join("certs");
    certs_for(&certs, false, &["127.0.0.1"]);
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    let worker = tcp_worker(&workspace, &certs);
    let url = format!("https://{}", worker.addr);
    let read = |f: &Path| std::fs::read(f).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Connects to the worker at `addr` trusting `ca`, as the client whose files are in
    // `client`; the file the test wrote, or why not.
    let read_note = |addr: &str, ca: &Path, client: &Path| {
        rt.block_on(async {
            let mut worker = cadre_sandbox::worker::connect_tls(
                &format!("https://{addr}"),
                read(ca),
                read(&client.join("client.crt")),
                read(&client.join("client.key")),
            )
            .await
            .map_err(|e| e.to_string())?;
            let note = ReadFileRequest {
                path: "notes/hello.txt".into(),
            };
            let read = worker.read_file(note).await.map_err(|s| s.to_string())?;
            Ok::<_, String>(read.into_inner().content)
        })
    };
    rt.block_on(async {
        let mut client = cadre_sandbox::worker::connect_tls(
            &url,
            read(&certs.join("ca.crt")),
            read(&certs.join("client.crt")),
            read(&certs.join("client.key")),
        )
        .await
        .unwrap();
        let note = WriteFileRequest {
            path: "notes/hello.txt".into(),
            content: b"over mutual tls".to_vec(),
        };
        client.write_file(note).await.unwrap();
    });
    let ca = certs.join("ca.crt");
    assert_eq!(
        read_note(&worker.addr, &ca, &certs).as_deref(),
        Ok(&b"over mutual tls"[..])
    );
    assert_eq!(read(&workspace.join("notes/hello.txt")), b"over mutual tls");

    // A node whose certificate is of another CA gets nothing from it, and the node refuses a
    // worker whose certificate is of another CA.
    let other = dir.path().join("other");
    certs_for(&other, false, &["127.0.0.1"]);
    assert!(
        read_note(&worker.addr, &ca, &other).is_err(),
        "a foreign client read the workspace"
    );
    let foreign_worker = tcp_worker(&workspace, &other);
    assert!(
        read_note(&foreign_worker.addr, &ca, &certs).is_err(),
        "the node trusted a foreign worker"
    );
}
