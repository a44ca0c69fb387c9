//! A real Kubernetes API server for tests (envtest style: etcd and kube-apiserver, no
//! controller-manager, no scheduler, no kubelet), and a stand-in kubelet for the worker pods.
//!
//! [`ApiServer`] runs Debian's etcd and the kube-apiserver that `scripts/setup-kube.sh` builds
//! (found in `$CADRE_KUBE_BIN`, default `/var/cache/cadre/kube-1.20.2/bin`), with RBAC on and
//! two static tokens: `admin` (system:masters) and the node's service account
//! (`system:serviceaccount:cadre:cadre`), so that the base Role of `deploy/` is what the node
//! may do.
//!
//! [`StandinKubelet`] plays the kubelet (and the scheduler) for worker pods: it binds each new
//! pod, gives it its own loopback address (127.A.B.C: the node connects to the pod IP as in a
//! real cluster), makes its volumes (emptyDirs, and Secrets read from the API), runs its
//! command under `runsc do` (gVisor) with the volumes' mount paths and the wildcard listen
//! address in its arguments replaced by the pod's, reports it Running and Ready once its port
//! answers (the readiness probe), and Failed when it exits. A deleted pod's process is killed
//! and the pod removed (as a kubelet confirms a graceful deletion).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};

use crate::{TempDir, cadre_bin, free_port};

/// The namespace of `deploy/base`.
pub const NAMESPACE: &str = "cadre";
/// The label selector of worker pods.
pub const WORKERS: &str = "app.kubernetes.io/component=worker";
/// The node's service account, as its token's user.
pub const NODE_USER: &str = "system:serviceaccount:cadre:cadre";

/// etcd and kube-apiserver on loopback; both killed when dropped.
pub struct ApiServer {
    etcd: Child,
    apiserver: Child,
    /// Scratch dir: certificates, kubeconfigs, etcd's data.
    pub dir: TempDir,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// A kubeconfig of `admin` (system:masters).
    pub admin: PathBuf,
    /// A kubeconfig of the node's service account (what the base Role allows).
    pub node: PathBuf,
    /// The CA of the server's certificate (and of `cadre certs init` in `dir/certs`).
    pub certs: PathBuf,
}

impl ApiServer {
    /// Starts etcd and the API server and waits until the server is ready.
    pub fn start() -> Self {
        let bin = kube_bin();
        let dir = TempDir::new("kube");
        let certs = dir.path().join("certs");
        let out = Command::new(cadre_bin())
            .args(["certs", "init"])
            .arg(&certs)
            .args(["--host", "127.0.0.1", "--host", "localhost"])
            .output()
            .expect("run cadre certs init");
        assert!(out.status.success(), "cadre certs init: {out:?}");
        let sa_key = dir.path().join("sa.key");
        let out = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .output()
            .expect("run openssl (scripts/setup-kube.sh installs it)");
        assert!(out.status.success(), "openssl genrsa: {out:?}");
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "admin-token,admin,1,\"system:masters\"\nnode-token,{NODE_USER},2,\
                 \"system:serviceaccounts,system:serviceaccounts:{NAMESPACE}\"\n"
            ),
        )
        .unwrap();
        let (client, peer, secure) = (free_port(), free_port(), free_port());
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let etcd = Command::new(bin.join("etcd"))
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(log("etcd.log"))
            .spawn()
            .expect("start etcd");
        let apiserver = Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={secure}"))
            .arg(format!(
                "--tls-cert-file={}",
                certs.join("node.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                certs.join("node.key").display()
            ))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-key-file={}", sa_key.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg(format!(
                "--cert-dir={}",
                dir.path().join("apiserver").display()
            ))
            .stdout(Stdio::null())
            .stderr(log("apiserver.log"))
            .spawn()
            .expect("start kube-apiserver");
        let url = format!("https://127.0.0.1:{secure}");
        let kubeconfig = |user: &str, token: &str| {
            let path = dir.path().join(format!("{user}.kubeconfig"));
            std::fs::write(
                &path,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    \
                     server: {url}\n    certificate-authority: {}\nusers:\n- name: {user}\n  \
                     user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    \
                     cluster: test\n    user: {user}\n    namespace: {NAMESPACE}\n\
                     current-context: test\n",
                    certs.join("ca.crt").display()
                ),
            )
            .unwrap();
            path
        };
        let admin = kubeconfig("admin", "admin-token");
        let node = kubeconfig("node", "node-token");
        let server = Self {
            etcd,
            apiserver,
            dir,
            url,
            admin,
            node,
            certs,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .kubectl(&["get", "--raw", "/readyz"])
                .is_ok_and(|out| out.trim() == "ok");
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready within 60 s; its log:\n{}",
                std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs kubectl as admin; its stdout, or its stderr as the error.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl as admin with `stdin`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Applies what a node needs from `deploy/base` (its namespace, service account, Role,
    /// RoleBinding and the RuntimeClass), as rendered by kustomize, with `rules` in place of
    /// the Role's when given (to take a verb away). Then the worker Secret (`tls.crt`,
    /// `tls.key`, `ca.crt` from `dir/certs`).
    pub fn apply_base(&self, rules: Option<&str>) {
        let rendered = Command::new("kubectl")
            .arg("kustomize")
            .arg(repo_root().join("deploy/base"))
            .output()
            .expect("run kubectl kustomize");
        assert!(rendered.status.success(), "kubectl kustomize: {rendered:?}");
        let rendered = String::from_utf8_lossy(&rendered.stdout);
        let wanted = [
            "Namespace",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "RuntimeClass",
        ];
        let mut docs: Vec<String> = rendered
            .split("\n---\n")
            .filter(|doc| {
                doc.lines()
                    .any(|l| wanted.iter().any(|k| l == format!("kind: {k}")))
            })
            .map(str::to_string)
            .collect();
        if let Some(rules) = rules {
            for doc in &mut docs {
                if doc.lines().any(|l| l == "kind: Role") {
                    let at = doc.find("rules:").expect("the Role has rules");
                    doc.truncate(at);
                    doc.push_str(rules);
                }
            }
        }
        self.kubectl_stdin(&["apply", "-f", "-"], Some(&docs.join("\n---\n")))
            .unwrap_or_else(|e| panic!("apply deploy/base: {e}"));
        let secret = format!(
            "create secret generic cadre-worker-tls -n {NAMESPACE} --from-file=tls.crt={} \
             --from-file=tls.key={} --from-file=ca.crt={}",
            self.certs.join("worker.crt").display(),
            self.certs.join("worker.key").display(),
            self.certs.join("ca.crt").display()
        );
        let mut args: Vec<&str> = secret.split(' ').collect();
        args.extend(["--dry-run=client", "-o", "yaml"]);
        let secret = self
            .kubectl(&args)
            .unwrap_or_else(|e| panic!("make the worker secret: {e}"));
        self.kubectl_stdin(&["apply", "-f", "-"], Some(&secret))
            .unwrap_or_else(|e| panic!("apply the worker secret: {e}"));
    }

    /// Creates a pod standing for the node's own (the owner of its worker pods); the stand-in
    /// kubelet leaves it alone.
    pub fn create_node_pod(&self, name: &str) {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  \
             labels:\n    app.kubernetes.io/component: node\nspec:\n  containers:\n  - name: \
             cadre\n    image: cadre:test\n"
        );
        self.kubectl_stdin(&["apply", "-f", "-"], Some(&pod))
            .unwrap_or_else(|e| panic!("create the node's pod: {e}"));
    }

    /// `kubectl get pods -l SELECTOR -o OUTPUT` in the test namespace.
    pub fn get_pods(&self, selector: &str, output: &str) -> String {
        self.kubectl(&["get", "pods", "-n", NAMESPACE, "-l", selector, "-o", output])
            .unwrap_or_else(|e| panic!("kubectl get pods -l {selector}: {e}"))
    }

    /// The `kubernetes` provider's config for this server, as the node's service account.
    pub fn provider_config(&self) -> cadre_actors::config::KubernetesSandbox {
        cadre_actors::config::KubernetesSandbox {
            image: "cadre:test".into(),
            namespace: Some(NAMESPACE.into()),
            runtime_class: Some("gvisor".into()),
            worker_secret: "cadre-worker-tls".into(),
            tls: cadre_actors::config::ClusterTls {
                cert_file: self.certs.join("client.crt"),
                key_file: self.certs.join("client.key"),
                ca_file: self.certs.join("ca.crt"),
            },
            kubeconfig: Some(self.node.clone()),
            start_timeout: Duration::from_secs(120),
        }
    }

    /// The worker pods' names (sorted) and phases, from the API.
    pub fn worker_pods(&self) -> Vec<(String, String)> {
        let out = self.get_pods(WORKERS, "json");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut pods: Vec<(String, String)> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["status"]["phase"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        pods.sort();
        pods
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where `scripts/setup-kube.sh` put etcd and kube-apiserver.
pub fn kube_bin() -> PathBuf {
    let bin = std::env::var_os("CADRE_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cadre/kube-1.20.2/bin"));
    assert!(
        bin.join("kube-apiserver").is_file() && bin.join("etcd").is_file(),
        "no kube-apiserver and etcd in {}: run scripts/setup-kube.sh (./scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_path_buf()
}

/// A pod the stand-in runs.
struct Running {
    pid: u32,
    dir: PathBuf,
}

/// What the stand-in did: for benchmarks and assertions.
#[derive(Debug, Default, Clone)]
pub struct StandinStats {
    /// Pods it ran.
    pub started: usize,
    /// From each pod's creation (its `creationTimestamp`, to the second) to Ready: measured
    /// from when the stand-in first saw it, which is within milliseconds of creation.
    pub ready_after: Vec<Duration>,
}

/// The stand-in kubelet: a thread following the namespace's worker pods. Dropping it kills
/// every process it started.
pub struct StandinKubelet {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    stats: Arc<Mutex<StandinStats>>,
}

impl StandinKubelet {
    /// Starts following the worker pods of `server`'s test namespace; pods run under
    /// `runsc do` (gVisor) unless `$CADRE_STANDIN_RUNTIME` is `process`.
    pub fn start(server: &ApiServer) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let running: Arc<Mutex<HashMap<String, Running>>> = Arc::default();
        let stats: Arc<Mutex<StandinStats>> = Arc::default();
        let root = server.dir.path().join("kubelet");
        std::fs::create_dir_all(&root).unwrap();
        let admin = server.admin.clone();
        let thread = {
            let (stop, running, stats) = (stop.clone(), running.clone(), stats.clone());
            std::thread::spawn(move || {
                cadre_actors::tls::install_provider();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let client = rt.block_on(async {
                    let kubeconfig = kube::config::Kubeconfig::read_from(&admin).unwrap();
                    let config =
                        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                            .await
                            .unwrap();
                    kube::Client::try_from(config).unwrap()
                });
                let mut kubelet = Loop {
                    rt,
                    pods: kube::Api::namespaced(client.clone(), NAMESPACE),
                    secrets: kube::Api::namespaced(client, NAMESPACE),
                    root,
                    running,
                    stats,
                    seen: HashMap::new(),
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    kubelet.sync();
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
            running,
            stats,
        }
    }

    /// What it did so far.
    pub fn stats(&self) -> StandinStats {
        self.stats.lock().unwrap().clone()
    }

    /// The host pid of pod `name`'s process (`runsc do`), while it runs.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.running.lock().unwrap().get(name).map(|r| r.pid)
    }
}

impl Drop for StandinKubelet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for (_, pod) in self.running.lock().unwrap().drain() {
            kill_group(pod.pid);
            let _ = std::fs::remove_dir_all(&pod.dir);
        }
    }
}

/// The stand-in's state between polls. It lists the pods (every 50 ms) rather than watching:
/// it stands in for a kubelet, whose own watch is not what is under test.
struct Loop {
    rt: tokio::runtime::Runtime,
    pods: kube::Api<Pod>,
    secrets: kube::Api<k8s_openapi::api::core::v1::Secret>,
    root: PathBuf,
    running: Arc<Mutex<HashMap<String, Running>>>,
    stats: Arc<Mutex<StandinStats>>,
    /// Pods handled, by name: (uid, when first seen, its child while it runs).
    seen: HashMap<String, (String, Instant, Option<Child>)>,
}

/// A loopback address no other pod of this process has (stand-ins of tests running at once
/// share the worker port), nor, likely, of another process: 127.A.B.C from a counter that
/// starts at a place of the process's own.
fn pod_ip() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(std::process::id().wrapping_mul(4099))
        % (200 * 250 * 250);
    format!(
        "127.{}.{}.{}",
        20 + n / 250 / 250,
        n / 250 % 250 + 1,
        n % 250 + 2
    )
}

impl Loop {
    /// Runs `f` on the pods API.
    fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, String> {
        self.rt.block_on(f).map_err(|e| e.to_string())
    }

    fn sync(&mut self) {
        let selector = ListParams::default().labels("app.kubernetes.io/component=worker");
        let Ok(list) = self.call(self.pods.list(&selector)) else {
            return;
        };
        let mut present = std::collections::HashSet::new();
        for pod in &list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            present.insert(name.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                // Confirms a graceful deletion, as a kubelet does once the pod stopped.
                self.stop_pod(&name);
                let _ = self.call(
                    self.pods
                        .delete(&name, &DeleteParams::default().grace_period(0)),
                );
                continue;
            }
            match self.seen.get(&name) {
                Some((seen_uid, _, _)) if *seen_uid == uid => {
                    self.check_exit(&name);
                }
                _ => {
                    // A new pod (or a new one of the same name).
                    self.stop_pod(&name);
                    self.seen.insert(name.clone(), (uid, Instant::now(), None));
                    if let Err(e) = self.run_pod(&name, pod) {
                        let status = serde_json::json!({
                            "status": { "phase": "Failed", "reason": "StandinError", "message": e }
                        });
                        let _ = self.call(self.pods.patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(&status),
                        ));
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.stop_pod(&name);
        }
    }

    /// Binds, prepares and starts pod `name`, then reports it ready once its port answers.
    fn run_pod(&mut self, name: &str, pod: &Pod) -> Result<(), String> {
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": { "name": name },
            "target": { "apiVersion": "v1", "kind": "Node", "name": "standin" }
        });
        self.call(
            self.pods
                .create_subresource::<serde_json::Value, serde_json::Value>(
                    "binding",
                    name,
                    &PostParams::default(),
                    &binding,
                ),
        )?;
        let pod = serde_json::to_value(pod).map_err(|e| e.to_string())?;
        let ip = pod_ip();
        let dir = self.root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        // Volumes: emptyDirs are directories; Secrets are read from the API into files.
        let mut volumes = HashMap::new();
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let vname = volume["name"].as_str().unwrap_or_default();
            let path = dir.join("volumes").join(vname);
            std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                let secret = self.call(self.secrets.get(secret))?;
                for (key, value) in secret.data.into_iter().flatten() {
                    std::fs::write(path.join(key), value.0).map_err(|e| e.to_string())?;
                }
            }
            volumes.insert(vname.to_string(), path);
        }
        let container = &pod["spec"]["containers"][0];
        let mounts: BTreeMap<String, PathBuf> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let path = volumes.get(m["name"].as_str()?)?;
                Some((m["mountPath"].as_str()?.to_string(), path.clone()))
            })
            .collect();
        let mut argv: Vec<String> = container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(container["args"].as_array().into_iter().flatten())
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        if argv.first().map(String::as_str) == Some("cadre") {
            argv[0] = cadre_bin().display().to_string();
        }
        for arg in argv.iter_mut().skip(1) {
            if let Some(rest) = arg.strip_prefix("0.0.0.0:") {
                *arg = format!("{ip}:{rest}");
            }
            // The longest mount path that is a prefix of the argument.
            if let Some((mount, host)) = mounts
                .iter()
                .filter(|(m, _)| arg.as_str() == m.as_str() || arg.starts_with(&format!("{m}/")))
                .max_by_key(|(m, _)| m.len())
            {
                *arg = format!("{}{}", host.display(), &arg[mount.len()..]);
            }
        }
        let port = container["ports"][0]["containerPort"]
            .as_u64()
            .unwrap_or(7443) as u16;
        let log = std::fs::File::create(dir.join("container.log")).map_err(|e| e.to_string())?;
        let mut command = if std::env::var("CADRE_STANDIN_RUNTIME").as_deref() == Ok("process") {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        } else {
            let mut c = Command::new("runsc");
            c.arg(format!("--root={}", dir.join("runsc").display()))
                // `do` gives a sandbox its own network (veth and iptables) unless rootless;
                // rootless with the host's network, the worker listens on the pod's address.
                .args([
                    "--rootless",
                    "--network=host",
                    "--ignore-cgroups",
                    "do",
                    "-quiet",
                    "--",
                ])
                .args(&argv);
            c
        };
        use std::os::unix::process::CommandExt;
        let child = command
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start {}: {e}", argv[0]))?;
        self.running.lock().unwrap().insert(
            name.to_string(),
            Running {
                pid: child.id(),
                dir: dir.clone(),
            },
        );
        let seen_at = self
            .seen
            .get(name)
            .map(|s| s.1)
            .unwrap_or_else(Instant::now);
        if let Some(entry) = self.seen.get_mut(name) {
            entry.2 = Some(child);
        }
        // The readiness probe: the worker's port answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("the worker did not listen on {addr} within 30 s"));
            }
            if self.check_exit(name) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = serde_json::json!({ "status": {
            "phase": "Running", "podIP": ip, "hostIP": "127.0.0.1",
            "conditions": [
                { "type": "PodScheduled", "status": "True" },
                { "type": "Initialized", "status": "True" },
                { "type": "ContainersReady", "status": "True" },
                { "type": "Ready", "status": "True" }
            ],
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "",
                "ready": true, "restartCount": 0, "started": true,
                "state": { "running": {} }
            }]
        }});
        self.call(
            self.pods
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status)),
        )?;
        let mut stats = self.stats.lock().unwrap();
        stats.started += 1;
        stats.ready_after.push(seen_at.elapsed());
        Ok(())
    }

    /// Reports pod `name` Failed or Succeeded if its process exited; true if it did.
    fn check_exit(&mut self, name: &str) -> bool {
        let Some((_, _, Some(child))) = self.seen.get_mut(name) else {
            return false;
        };
        let Ok(Some(status)) = child.try_wait() else {
            return false;
        };
        self.seen.get_mut(name).unwrap().2 = None;
        if let Some(pod) = self.running.lock().unwrap().remove(name) {
            kill_group(pod.pid);
        }
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().unwrap_or(128 + status.signal().unwrap_or(0));
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        let patch = serde_json::json!({ "status": {
            "phase": phase,
            "conditions": [{ "type": "Ready", "status": "False" }],
            "containerStatuses": [{
                "name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": {
                    "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }
                } }
            }]
        }});
        let _ = self.call(self.pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ));
        true
    }

    fn stop_pod(&mut self, name: &str) {
        if let Some((_, _, Some(mut child))) = self.seen.remove(name) {
            kill_group(child.id());
            let _ = child.wait();
        }
        if let Some(pod) = self.running.lock().unwrap().remove(name) {
            kill_group(pod.pid);
            let _ = std::fs::remove_dir_all(&pod.dir);
        }
    }
}

/// SIGKILLs the process group `pid` leads (`runsc do`, its sandbox and gofer).
fn kill_group(pid: u32) {
    // SAFETY: kill(2) on a process group this harness started.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}
