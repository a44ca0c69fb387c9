//! Harness for end-to-end tests: runs the real `cadre` binary as a node on a free loopback port
//! with a temporary data dir ([`Node`]), or several of them ([`Cluster`]), and drives them
//! through the real CLI.

pub mod browser;
pub mod kube;
pub mod otlp;
pub mod prometheus;
pub mod servers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `cadre` binary: `$CADRE_BIN`, or built (if stale) by `cargo build -p cadre`.
pub fn cadre_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("CADRE_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => workspace_bin("cadre", "cadre"),
    })
    .clone()
}

/// A binary of this workspace, built (if stale) by `cargo build -p PACKAGE --bin BIN`.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build -p {package} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == bin)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .unwrap_or_else(|| panic!("cargo reported no executable {bin}"))
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir, its name tagged with `tag`.
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cadre-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `cadre serve`.
pub struct Node {
    child: Option<Child>,
    /// The API address it listens on.
    pub addr: String,
    /// Scratch dir holding its config (and its data dir, unless given another).
    pub dir: TempDir,
    /// The node's data dir.
    pub data: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// Starts `cadre serve` with `config` (YAML) on a free port and waits until it listens.
    pub fn start(config: &str) -> Self {
        let dir = TempDir::new("node");
        let data = dir.path().join("data");
        Self::start_in(config, dir, &data, &[])
    }

    /// Like [`Node::start`], with more `cadre serve` arguments.
    pub fn start_with_args(config: &str, args: &[&str]) -> Self {
        let dir = TempDir::new("node");
        let data = dir.path().join("data");
        Self::start_in(config, dir, &data, args)
    }

    /// Like [`Node::start`], on an existing data dir (a restart).
    pub fn start_with_data(config: &str, data: &Path) -> Self {
        Self::start_in(config, TempDir::new("node"), data, &[])
    }

    /// Like [`Node::start_with_data`], with more `cadre serve` arguments.
    pub fn start_with_data_args(config: &str, data: &Path, args: &[&str]) -> Self {
        Self::start_in(config, TempDir::new("node"), data, args)
    }

    /// Starts `cadre serve --config FILE` (a file of the test's own, whose relative paths are
    /// its folder's) from `/`, so that nothing resolves against the test's directory.
    pub fn start_from_file(config: &Path) -> Self {
        let dir = TempDir::new("node");
        let data = dir.path().join("data");
        Self::spawn(config, dir, &data, &[], Path::new("/"), &[])
    }

    /// Like [`Node::start_from_file`], on data dir `data` and with more environment variables.
    pub fn start_from_file_with_env(config: &Path, data: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn(config, TempDir::new("node"), data, &[], Path::new("/"), env)
    }

    fn start_in(config: &str, dir: TempDir, data: &Path, args: &[&str]) -> Self {
        let config_path = dir.path().join("cadre.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let cwd = std::env::current_dir().expect("cwd");
        Self::spawn(&config_path, dir, data, args, &cwd, &[])
    }

    fn spawn(
        config_path: &Path,
        dir: TempDir,
        data: &Path,
        args: &[&str],
        cwd: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(cadre_bin())
            .current_dir(cwd)
            .arg("serve")
            .arg("--config")
            .arg(config_path)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("CADRE_LOG", "info,ractor=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cadre serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("cadre: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "cadre serve did not start:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Self {
            child: Some(child),
            addr,
            dir,
            data: data.to_path_buf(),
            log,
        }
    }

    /// Pid of the `cadre serve` process, which must not have been stopped or waited for.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with_server(&self.addr, args)
    }

    /// `cadre exec --agent echo --conversation CONVERSATION --input INPUT` against this node.
    pub fn exec_echo(&self, conversation: &str, input: &str) -> Output {
        self.exec("echo", conversation, input)
    }

    /// `cadre exec --agent AGENT --conversation CONVERSATION --input INPUT`.
    pub fn exec(&self, agent: &str, conversation: &str, input: &str) -> Output {
        self.cli(&[
            "exec",
            "--agent",
            agent,
            "--conversation",
            conversation,
            "--input",
            input,
        ])
    }

    /// `cadre exec` in the background (it streams until the exec or the node ends).
    pub fn exec_in_background(&self, agent: &str, conversation: &str, input: &str) -> Child {
        Command::new(cadre_bin())
            .args(["exec", "--agent", agent, "--conversation", conversation])
            .args(["--input", input, "--server", &self.addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cadre exec")
    }

    /// A conversation's log so far (nothing while it does not exist yet).
    pub fn log_so_far(&self, conversation: &str) -> Vec<Value> {
        let out = self.cli(&["conversations", "log", conversation, "-o", "json"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A read command's `-o json` output (JSON lines), parsed; the command must succeed.
    pub fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "cadre {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON lines"))
            .collect()
    }

    /// `cadre tree -o json`, parsed.
    pub fn tree(&self) -> Value {
        let out = self.cli(&["tree", "-o", "json"]);
        assert!(
            out.status.success(),
            "cadre tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("tree -o json is JSON")
    }

    /// Polls the tree until `pred` holds, or panics after `limit`.
    pub fn wait_tree(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let tree = self.tree();
            if pred(&tree) {
                return tree;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; tree: {tree:#}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig` to the node and waits for it to exit.
    pub fn stop(&mut self, sig: i32) -> ExitStatus {
        unsafe { libc::kill(self.pid() as i32, sig) };
        self.wait_exit(Duration::from_secs(30))
    }

    /// Waits for the node to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("cadre serve did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the node has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // A node a test paused (SIGSTOP) is woken to stop. Nothing here panics: a drop during a
        // failed test's unwinding would abort the run and leave every process of it behind.
        let pid = child.id() as i32;
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        if !std::thread::panicking() {
            panic!("cadre serve did not exit on SIGTERM:\n{}", self.log());
        }
    }
}

/// N real `cadre serve` processes on loopback, each on a free port with a data dir of its own,
/// any of which can be killed (by pid) and started again on its data dir. Every node still
/// running is stopped when the cluster is dropped, and the data dirs are removed.
///
/// [`Cluster::start`] starts independent nodes; [`Cluster::joined`] starts one cluster.
pub struct Cluster {
    /// Each node's config (YAML) and extra `cadre serve` arguments.
    configs: Vec<(String, Vec<String>)>,
    /// Index i holds node i while it runs.
    nodes: Vec<Option<Node>>,
    data: Vec<PathBuf>,
    /// Holds the data dirs; dropped after the nodes (field order).
    dir: TempDir,
}

/// The failure timeout of the clusters [`Cluster::joined`] starts.
pub const FAILURE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The controller lease's TTL in the clusters [`Cluster::leased`] starts.
pub const LEASE_TTL: Duration = Duration::from_millis(2000);

impl Cluster {
    /// Starts `n` independent nodes with `config` (YAML), one after another.
    pub fn start(n: usize, config: &str) -> Self {
        let configs = (0..n).map(|_| (config.to_string(), Vec::new())).collect();
        Self::with_configs(TempDir::new("cluster"), configs)
    }

    /// Starts `n` nodes as one cluster `test` on loopback: node 0 holds the log
    /// (`store.embedded`), the others use it (`store.cluster`); node i is named `node-i`, takes
    /// cluster connections on a port of its own (kept across restarts) and has every node as a
    /// seed. `extra` is more config (YAML, without `version` and `store`), written right after
    /// the `cluster` section: lines indented by two spaces go on with it (`  tls: …`).
    pub fn joined(n: usize, extra: &str) -> Self {
        Self::joined_with(
            n,
            |i, _| {
                if i == 0 {
                    "embedded: {}"
                } else {
                    "cluster: {}"
                }
                .into()
            },
            extra,
        )
    }

    /// Starts `n` nodes as one cluster `test` whose every node reaches one store and any can be
    /// the controller, under a lease of [`LEASE_TTL`]: FoundationDB when
    /// `$CADRE_TEST_FDB_CLUSTER_FILE` names a cluster file (a directory of its own per
    /// cluster), else a SQLite file they share. Otherwise as [`Cluster::joined`].
    pub fn leased(n: usize, extra: &str) -> Self {
        let ttl = LEASE_TTL.as_millis();
        Self::joined_with(
            n,
            |_, dir| match std::env::var("CADRE_TEST_FDB_CLUSTER_FILE") {
                Ok(file) => format!(
                    "foundationdb: {{cluster_file: {file}, prefix: {}, lease_ttl_ms: {ttl}}}",
                    dir.file_name().expect("a named dir").to_string_lossy()
                ),
                Err(_) => format!(
                    "shared_sqlite: {{path: {}, lease_ttl_ms: {ttl}}}",
                    dir.join("shared.db").display()
                ),
            },
            extra,
        )
    }

    /// Whether [`Cluster::leased`] clusters are on FoundationDB.
    pub fn on_foundationdb() -> bool {
        std::env::var_os("CADRE_TEST_FDB_CLUSTER_FILE").is_some()
    }

    /// As [`Cluster::joined`], with node i's `store` section `store(i, the cluster's dir)`.
    fn joined_with(n: usize, store: impl Fn(usize, &Path) -> String, extra: &str) -> Self {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let seeds: Vec<String> = ports
            .iter()
            .flat_map(|p| ["--seed".to_string(), format!("127.0.0.1:{p}")])
            .collect();
        let dir = TempDir::new("cluster");
        let cookie = dir.path().join("cookie");
        std::fs::write(&cookie, "a-cookie-for-this-test-cluster\n").expect("write the cookie");
        let configs = (0..n)
            .map(|i| {
                let store = store(i, dir.path());
                let config = format!(
                    "version: v1\nstore: {{{store}}}\ncluster:\n  name: test\n  \
                     cookie_file: {}\n  failure_timeout_ms: {}\n{extra}",
                    cookie.display(),
                    FAILURE_TIMEOUT.as_millis()
                );
                let mut args = vec![
                    "--node".to_string(),
                    format!("node-{i}"),
                    "--cluster-listen".to_string(),
                    format!("127.0.0.1:{}", ports[i]),
                ];
                args.extend(seeds.iter().cloned());
                (config, args)
            })
            .collect();
        Self::with_configs(dir, configs)
    }

    fn with_configs(dir: TempDir, configs: Vec<(String, Vec<String>)>) -> Self {
        let data: Vec<PathBuf> = (0..configs.len())
            .map(|i| dir.path().join(format!("node-{i}")))
            .collect();
        let nodes = configs
            .iter()
            .zip(&data)
            .map(|((config, args), d)| {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Some(Node::start_with_data_args(config, d, &args))
            })
            .collect();
        Self {
            configs,
            nodes,
            data,
            dir,
        }
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`, which must be running.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// The running nodes, with their indices.
    pub fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// Node `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.data[i]
    }

    /// Node `i`'s config (YAML) and extra `cadre serve` arguments.
    pub fn config(&self, i: usize) -> (&str, Vec<&str>) {
        let (config, args) = &self.configs[i];
        (config, args.iter().map(String::as_str).collect())
    }

    /// A scratch dir that lives as long as the cluster.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Sends `sig` to node `i` (by pid) and waits until it has exited.
    pub fn stop(&mut self, i: usize, sig: i32) -> ExitStatus {
        let mut node = self.nodes[i]
            .take()
            .unwrap_or_else(|| panic!("node {i} is not running"));
        node.stop(sig)
    }

    /// SIGKILLs node `i` and waits until it is gone.
    pub fn kill(&mut self, i: usize) -> ExitStatus {
        self.stop(i, libc::SIGKILL)
    }

    /// Starts node `i` again on its data dir (on a new API port).
    pub fn restart(&mut self, i: usize) -> &Node {
        assert!(self.nodes[i].is_none(), "node {i} is still running");
        let (config, args) = &self.configs[i];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes[i] = Some(Node::start_with_data_args(config, &self.data[i], &args));
        self.node(i)
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1, for a listener a test starts later
/// (a node's cluster port). It is below the kernel's ephemeral range (32768 and up), so no
/// outgoing connection of the tests takes it meanwhile, and this process hands it out once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const PORTS: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts at its own place in the range.
    let start = std::process::id().wrapping_mul(997);
    for _ in 0..PORTS {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + start.wrapping_add(n) % PORTS) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + PORTS)
}

/// Runs the CLI with `--server` taken from `$CADRE_SERVER`.
pub fn cli_with_server(server: &str, args: &[&str]) -> Output {
    Command::new(cadre_bin())
        .args(args)
        .env("CADRE_SERVER", server)
        .output()
        .expect("run cadre")
}

/// Runs the CLI with no server configured (default address).
pub fn cli(args: &[&str]) -> Output {
    Command::new(cadre_bin())
        .args(args)
        .env_remove("CADRE_SERVER")
        .output()
        .expect("run cadre")
}

/// The node at `path` (`root/a/b`, `system/agents`) in a `tree -o json` value (both trees,
/// or one).
pub fn find<'a>(tree: &'a Value, path: &str) -> &'a Value {
    let top = path.split('/').next().unwrap_or_default();
    if tree.get("path").is_none() && tree.get(top).is_some() {
        return find(&tree[top], path);
    }
    if tree["path"] == path {
        return tree;
    }
    tree["children"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| {
            let p = c["path"].as_str()?;
            (path == p || path.starts_with(&format!("{p}/"))).then(|| find(c, path))
        })
        .unwrap_or_else(|| panic!("no {path} in {tree:#}"))
}

/// Pid of the actor at `path` in a `tree -o json` value.
pub fn pid_of(tree: &Value, path: &str) -> u32 {
    find(tree, path)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{path} has no pid")) as u32
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Whether a process with this pid runs (exists and is not a zombie waiting to be reaped).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Every running process below `pid` (children, theirs, ...): pid and command line.
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after_name = stat.rsplit(')').next().unwrap_or("");
        if let Some(ppid) = after_name
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
        {
            parents.entry(ppid).or_default().push(child);
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(next) = todo.pop() {
        for &child in parents.get(&next).into_iter().flatten() {
            if running(child) {
                let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                found.push((child, cmdline.trim().to_string()));
            }
            todo.push(child);
        }
    }
    found
}

/// The audit conversation of a stopped node's data dir: (path, change, reason) in log order.
pub fn audit_log(data_dir: &Path) -> Vec<(String, String, String)> {
    use cadre_actors::controller::AUDIT_CONVERSATION;
    use cadre_actors::store::Store;
    use cadre_actors::store::tuple::{Elem, range};
    use prost::Message;

    let store = cadre_cluster::store::SqliteStore::open(data_dir).expect("open the node's store");
    let (begin, end) = range(&[Elem::Str("conv"), Elem::Str(AUDIT_CONVERSATION)]);
    let mut out = Vec::new();
    store
        .read(&mut |t| {
            for (_, v) in t.range(&begin, &end, usize::MAX, false)? {
                let e = cadre_proto::v1::Event::decode(v.as_slice()).expect("event");
                if let Some(cadre_proto::v1::event::Kind::ActorLifecycle(l)) = e.kind {
                    out.push((l.path, l.change, l.reason));
                }
            }
            Ok(())
        })
        .expect("read audit log");
    out
}

/// Where `scripts/setup.sh` installs the MCP servers the tests drive (`$CADRE_MCP_DIR`).
pub fn mcp_dir() -> PathBuf {
    std::env::var_os("CADRE_MCP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/cadre-mcp"))
}

/// `@modelcontextprotocol/server-everything` (npm) on stdio, as a YAML flow list.
pub fn everything_command() -> String {
    let index =
        mcp_dir().join("npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        index.exists(),
        "{} is missing: run scripts/setup.sh",
        index.display()
    );
    format!("[node, \"{}\", stdio]", index.display())
}

/// `mcp-server-time` (PyPI) on stdio, as a YAML flow list.
pub fn time_command() -> String {
    let python = mcp_dir().join("time/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    format!(
        "[\"{}\", -m, mcp_server_time, --local-timezone, UTC]",
        python.display()
    )
}

/// SIGKILLs process `pid` inside the gVisor sandbox `sandbox` of a node with data dir `data`.
pub fn kill_in_sandbox(data: &Path, sandbox: &str, pid: u32) {
    let out = Command::new("runsc")
        .arg("--root")
        .arg(data.join("sandboxes/runsc"))
        .args(["exec", sandbox, "/bin/kill", "-9", &pid.to_string()])
        .output()
        .expect("run runsc exec");
    assert!(
        out.status.success(),
        "runsc exec kill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One HTTP call on loopback (`GET`, or `POST` with a JSON `body`), with a bearer `token`
/// unless it is empty: the status code and the body; `None` if it could not be made.
pub fn http(method: &str, url: &str, token: &str, body: Option<Value>) -> Option<(u16, String)> {
    // reqwest is built without a TLS provider of its own; cadre's is ring.
    cadre_actors::tls::install_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = match (method, body) {
            ("GET", _) => client.get(url),
            (_, body) => client.post(url).json(&body.unwrap_or(Value::Null)),
        };
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        let response = request.timeout(Duration::from_secs(10)).send().await.ok()?;
        let code = response.status().as_u16();
        Some((code, response.text().await.ok()?))
    })
}
