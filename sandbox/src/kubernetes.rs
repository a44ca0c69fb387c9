//! The `kubernetes` provider: each sandbox is a worker pod running `cadre worker` on TCP with
//! mutual TLS.
//!
//! A pod is made from the sandbox's spec ([`worker_pod`]): the configured runtime class
//! (`gvisor` by default), the sandbox's limits as its resources, non-root with a read-only root
//! filesystem, every capability dropped, seccomp `RuntimeDefault`, no service account token,
//! labels naming the cluster, node, tenant and sandbox, and an owner reference to the node's
//! own pod (`$POD_NAME`) so that Kubernetes deletes a node's pods with it. One watcher (kube-rs
//! `watcher`) follows the node's pods: a pod that fails, is evicted, OOM-killed or deleted ends
//! its sandbox, which the pool handles as any dead sandbox.
//!
//! There is no checkpoint/restore on stock Kubernetes. A sandbox's workspace lives in the pod
//! (an `emptyDir`); when the sandbox is stopped on purpose (released, or suspended when idle)
//! the workspace is first copied to the node's workspace directory, and a sandbox started under
//! the same id gets it back. A pod that dies by itself loses what was written since.
//!
//! A node that starts finds the pods an earlier run of it left (by label): those of sandboxes
//! the pool kept for an owner are adopted by the next start under their id (their files are in
//! them), the rest are deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_actors::config::KubernetesSandbox;
use cadre_actors::sandbox::{SandboxEnded, SandboxHold};
use cadre_proto::v1::worker_client::WorkerClient;
use cadre_proto::v1::{ListFilesRequest, PassivateRequest, ReadFileRequest, WriteFileRequest};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, Pod, PodSecurityContext, PodSpec,
    Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::{Sandbox, SandboxError, SandboxProvider, SandboxSpec, StartFuture, worker};

/// The port a worker pod serves the worker protocol on.
pub const WORKER_PORT: u16 = 7443;
/// Where a worker pod mounts its TLS Secret.
const TLS_DIR: &str = "/etc/cadre/worker-tls";
/// The worker pod's workspace (an `emptyDir`).
const WORKSPACE: &str = "/workspace";
/// The non-root user worker pods run as (the image's `cadre` user).
const WORKER_UID: i64 = 65532;
/// Labels of worker pods.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// The value of [`LABEL_COMPONENT`] on worker pods.
pub const COMPONENT_WORKER: &str = "worker";
/// The cluster a worker pod's node belongs to.
pub const LABEL_CLUSTER: &str = "cadre.dev/cluster";
/// The node that made a worker pod.
pub const LABEL_NODE: &str = "cadre.dev/node";
/// The tenant of a worker pod (`none` while warm).
pub const LABEL_TENANT: &str = "cadre.dev/tenant";
/// The sandbox id of a worker pod.
pub const LABEL_SANDBOX: &str = "cadre.dev/sandbox";
/// `true` on worker pods whose actors may open network connections; a NetworkPolicy gives
/// only these egress.
pub const LABEL_EGRESS: &str = "cadre.dev/egress";
/// The tenant's name in full (labels hold at most 63 characters).
const ANNOTATION_TENANT: &str = "cadre.dev/tenant";
/// Largest message on a worker connection: the workspace is copied file by file.
const MAX_MESSAGE: usize = 256 << 20;
/// How long copying a workspace out of a pod that is being stopped may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a deleted pod may take to go.
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// Who the node is, for its pods' names, labels and owner.
#[derive(Debug, Clone, PartialEq)]
pub struct PodOwner {
    /// The cluster's name (`none` for a node on its own).
    pub cluster: String,
    /// The node's name.
    pub node: String,
    /// The node's own pod (`$POD_NAME`), which owns its worker pods; `None` outside a pod.
    pub pod: Option<String>,
}

/// Starts worker pods on Kubernetes.
pub struct KubernetesProvider {
    pods: Api<Pod>,
    config: KubernetesSandbox,
    namespace: String,
    owner: PodOwner,
    workspace_limit: Option<u64>,
    /// The node's pod as owner of its worker pods.
    owner_ref: Option<OwnerReference>,
    tls: Arc<ClientTls>,
    /// Each known pod's state, as the watcher sees it, by pod name.
    states: Arc<Mutex<HashMap<String, watch::Sender<PodState>>>>,
    /// Pods an earlier run left, by sandbox id: adopted by a start under that id.
    leftovers: Mutex<HashMap<String, String>>,
    /// The actor each kept sandbox of an earlier run is kept for, by sandbox id.
    kept_for: Mutex<BTreeMap<String, String>>,
    /// The pod of each sandbox, by sandbox id.
    names: Arc<Mutex<HashMap<String, String>>>,
    /// Makes each pod's name new (a sandbox started again gets a new pod, and the events of
    /// its old one cannot be taken for the new one's).
    generation: std::sync::atomic::AtomicU64,
    watcher: tokio::task::JoinHandle<()>,
}

/// The node's side of its worker connections.
struct ClientTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// A pod's state, as far as a sandbox cares.
#[derive(Debug, Clone, PartialEq)]
pub enum PodState {
    /// Not ready yet; why, if the kubelet says (`ImagePullBackOff: …`).
    Pending(Option<String>),
    /// Ready, at this IP.
    Ready(String),
    /// Gone or finished.
    Ended(SandboxEnded),
}

impl KubernetesProvider {
    /// Connects to the API server (the kubeconfig, else in-cluster), finds the node's own pod
    /// for the owner reference, starts the watcher and lists what an earlier run left.
    ///
    /// `workspace_limit` bounds each pod's workspace (its `emptyDir` and ephemeral storage)
    /// where a sandbox's spec has no quota of its own (the node's copy is unbounded when the
    /// node cannot loop-mount, as without root).
    pub async fn new(
        config: KubernetesSandbox,
        owner: PodOwner,
        workspace_limit: Option<u64>,
    ) -> Result<Self, SandboxError> {
        // kube's rustls takes the process's provider: ring, like every other link.
        cadre_actors::tls::install_provider();
        let unavailable = |what: String| SandboxError::Unavailable(format!("kubernetes: {what}"));
        let client_config = match &config.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| unavailable(format!("kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| unavailable(format!("kubeconfig {}: {e}", path.display())))?
            }
            None => kube::Config::infer().await.map_err(|e| {
                unavailable(format!(
                    "no in-cluster service account and no kubeconfig ({e}); set \
                     sandbox.kubernetes.kubeconfig"
                ))
            })?,
        };
        let namespace = config
            .namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| client_config.default_namespace.clone());
        let client = kube::Client::try_from(client_config)
            .map_err(|e| unavailable(format!("client: {e}")))?;
        let pods: Api<Pod> = Api::namespaced(client, &namespace);
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| {
                unavailable(format!("sandbox.kubernetes.tls: {}: {e}", path.display()))
            })
        };
        let tls = Arc::new(ClientTls {
            ca: read(&config.tls.ca_file)?,
            cert: read(&config.tls.cert_file)?,
            key: read(&config.tls.key_file)?,
        });
        let owner_ref = match &owner.pod {
            Some(name) => {
                let own = pods
                    .get(name)
                    .await
                    .map_err(|e| api_error(&e, "get", &format!("pod {name} (the node's own)")))?;
                Some(OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: name.clone(),
                    uid: own.metadata.uid.unwrap_or_default(),
                    block_owner_deletion: Some(true),
                    controller: Some(false),
                })
            }
            None => None,
        };
        let selector = owner.selector();
        let listed = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error(&e, "list", "pods"))?;
        let leftovers = listed
            .items
            .iter()
            .filter_map(|pod| {
                let sandbox = pod.metadata.labels.as_ref()?.get(LABEL_SANDBOX)?;
                Some((sandbox.clone(), pod.metadata.name.clone()?))
            })
            .collect();
        let states: Arc<Mutex<HashMap<String, watch::Sender<PodState>>>> = Arc::default();
        let watcher = tokio::spawn(watch_pods(pods.clone(), selector, states.clone()));
        tracing::info!(%namespace, node = %owner.node, "kubernetes sandbox provider ready");
        Ok(Self {
            pods,
            config,
            namespace,
            owner,
            workspace_limit,
            owner_ref,
            tls,
            states,
            leftovers: Mutex::new(leftovers),
            names: Arc::default(),
            kept_for: Mutex::default(),
            // Seeded from the clock, so a restarted node names its pods anew too.
            generation: std::sync::atomic::AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64 & 0xff_ffff),
            ),
            watcher,
        })
    }

    /// The namespace of the worker pods.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name of the pod of sandbox `id`, while it has one.
    pub fn pod_of(&self, id: &str) -> Option<String> {
        self.names.lock().expect("pod names").get(id).cloned()
    }

    /// The state of pod `name` as the watcher sees it, watched from now on.
    fn state_of(&self, name: &str) -> watch::Receiver<PodState> {
        let mut states = self.states.lock().expect("pod states");
        states
            .entry(name.to_string())
            .or_insert_with(|| watch::channel(PodState::Pending(None)).0)
            .subscribe()
    }

    async fn launch(&self, mut spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        spec.workspace_quota = spec.workspace_quota.or(self.workspace_limit);
        let fail = |why: String| SandboxError::Start {
            id: spec.id.clone(),
            why,
        };
        let leftover = self.leftovers.lock().expect("leftovers").remove(&spec.id);
        let adopted = match &leftover {
            Some(pod) => self.adopt(pod).await,
            None => false,
        };
        let name = match leftover {
            Some(pod) if adopted => pod,
            _ => {
                let generation = self
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                pod_name(&self.owner.node, &spec.id, generation)
            }
        };
        self.names
            .lock()
            .expect("pod names")
            .insert(spec.id.clone(), name.clone());
        let mut state = self.state_of(&name);
        if !adopted {
            let pod = worker_pod(
                &self.config,
                &self.owner,
                self.owner_ref.clone(),
                &spec,
                &name,
            );
            if let Err(e) = self.pods.create(&PostParams::default(), &pod).await {
                self.forget(&name);
                return Err(fail(
                    api_error(&e, "create", &format!("pod {name}")).to_string(),
                ));
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        let ip = loop {
            let current = state.borrow_and_update().clone();
            match current {
                PodState::Ready(ip) => break ip,
                PodState::Ended(ended) => {
                    self.delete(&name).await;
                    return Err(fail(format!(
                        "pod {name} ended before it was ready: {}",
                        ended.status
                    )));
                }
                PodState::Pending(why) => {
                    match tokio::time::timeout_at(deadline, state.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            self.delete(&name).await;
                            return Err(fail(format!("pod {name}: its watch ended")));
                        }
                        Err(_) => {
                            self.delete(&name).await;
                            return Err(fail(format!(
                                "pod {name} was not ready within {} ms{}",
                                self.config.start_timeout.as_millis(),
                                why.map(|w| format!(" ({w})")).unwrap_or_default()
                            )));
                        }
                    }
                }
            }
        };
        let client = match self.connect(&ip).await {
            Ok(client) => client,
            Err(e) => {
                self.delete(&name).await;
                return Err(fail(format!("worker in pod {name} at {ip}: {e}")));
            }
        };
        if adopted {
            // The worker still hosts the actor as the earlier run activated it; placement
            // activates it again, from the state the node holds.
            let owner = self.kept_for.lock().expect("kept").remove(&spec.id);
            if let Some(actor_id) = owner {
                let _ = client
                    .clone()
                    .passivate(PassivateRequest {
                        actor_id,
                        keep_active: false,
                    })
                    .await;
            }
        } else if let Err(e) = copy_in(&client, &spec.workspace).await {
            self.delete(&name).await;
            return Err(fail(format!(
                "cannot copy workspace {} into pod {name}: {e}",
                spec.workspace.display()
            )));
        }
        let hold = PodHold {
            pods: self.pods.clone(),
            sandbox: spec.id.clone(),
            names: self.names.clone(),
            name,
            state,
            worker: client.clone(),
            workspace: spec.workspace.clone(),
            states: self.states.clone(),
        };
        Ok(Sandbox::new(spec, "kubernetes", client, Box::new(hold)))
    }

    /// Takes over pod `name` left by an earlier run, if it is still there and not ending: its
    /// owner reference is set to this node's pod. False if it cannot be, after deleting it.
    async fn adopt(&self, name: &str) -> bool {
        let state = self.state_of(name);
        let usable = !matches!(*state.borrow(), PodState::Ended(_));
        if usable {
            let owners = json_owner(self.owner_ref.as_ref());
            let patch = serde_json::json!({ "metadata": { "ownerReferences": owners } });
            match self
                .pods
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(pod = name, "adopted a worker pod of an earlier run");
                    return true;
                }
                Err(e) => tracing::warn!(pod = name, error = %api_error(&e, "patch", "pods"),
                    "cannot adopt a worker pod of an earlier run; deleting it"),
            }
        }
        self.delete(name).await;
        false
    }

    async fn connect(&self, ip: &str) -> Result<WorkerClient<Channel>, String> {
        let url = format!("https://{}:{WORKER_PORT}", bracket(ip));
        // A ready pod listens; a retry covers a readiness probe that raced the listener.
        let mut last = String::new();
        for attempt in 0..5u32 {
            match worker::connect_tls(
                &url,
                self.tls.ca.clone(),
                self.tls.cert.clone(),
                self.tls.key.clone(),
            )
            .await
            {
                Ok(client) => {
                    return Ok(client
                        .max_decoding_message_size(MAX_MESSAGE)
                        .max_encoding_message_size(MAX_MESSAGE));
                }
                Err(e) => {
                    last = format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    )
                }
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        Err(last)
    }

    async fn delete(&self, name: &str) {
        delete_pod(&self.pods, name).await;
        self.forget(name);
    }

    fn forget(&self, name: &str) {
        self.states.lock().expect("pod states").remove(name);
        self.names
            .lock()
            .expect("pod names")
            .retain(|_, pod| pod != name);
    }
}

impl Drop for KubernetesProvider {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl SandboxProvider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn isolated(&self) -> bool {
        true
    }

    fn start(&self, spec: SandboxSpec) -> StartFuture<'_> {
        Box::pin(self.launch(spec))
    }

    fn cannot_checkpoint(&self) -> Option<String> {
        Some(
            "stock Kubernetes cannot checkpoint a pod: a suspended worker pod's workspace is \
             copied to the node and the pod deleted; it comes back in a new pod"
                .into(),
        )
    }

    fn leased(&self, id: &str, tenant: &str) {
        let Some(name) = self.pod_of(id) else { return };
        let pods = self.pods.clone();
        let patch = serde_json::json!({
            "metadata": {
                "labels": { LABEL_TENANT: label_value(tenant) },
                "annotations": { ANNOTATION_TENANT: tenant },
            }
        });
        tokio::spawn(async move {
            if let Err(e) = pods
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(pod = %name, error = %api_error(&e, "patch", "pods"),
                    "cannot label a worker pod with its tenant");
            }
        });
    }

    fn adopt(&self, kept: &BTreeMap<String, String>) {
        *self.kept_for.lock().expect("kept") = kept.clone();
        let mut leftovers = self.leftovers.lock().expect("leftovers");
        let unkept: Vec<String> = leftovers
            .extract_if(|sandbox, _| !kept.contains_key(sandbox))
            .map(|(_, pod)| pod)
            .collect();
        drop(leftovers);
        for pod in unkept {
            tracing::info!(%pod, "deleting a worker pod left by an earlier run");
            let pods = self.pods.clone();
            let states = self.states.clone();
            tokio::spawn(async move {
                delete_pod(&pods, &pod).await;
                states.lock().expect("pod states").remove(&pod);
            });
        }
    }
}

impl PodOwner {
    /// The node of `config`: its cluster's name (`none` alone) and its name in it (else the
    /// host name), owned by pod `pod`.
    pub fn of(config: &cadre_actors::config::Config, pod: Option<String>) -> Self {
        Self {
            cluster: config
                .cluster
                .as_ref()
                .map_or_else(|| "none".to_string(), |c| c.name.clone()),
            node: config
                .cluster
                .as_ref()
                .map_or_else(cadre_actors::config::host_name, |c| c.node.clone()),
            pod,
        }
    }

    /// The label selector of this node's worker pods.
    pub fn selector(&self) -> String {
        format!(
            "{LABEL_COMPONENT}={COMPONENT_WORKER},{LABEL_CLUSTER}={},{LABEL_NODE}={}",
            label_value(&self.cluster),
            label_value(&self.node)
        )
    }
}

/// What keeps a worker pod: deleting it ends the sandbox.
struct PodHold {
    pods: Api<Pod>,
    sandbox: String,
    names: Arc<Mutex<HashMap<String, String>>>,
    name: String,
    state: watch::Receiver<PodState>,
    worker: WorkerClient<Channel>,
    /// The node's copy of the workspace.
    workspace: PathBuf,
    states: Arc<Mutex<HashMap<String, watch::Sender<PodState>>>>,
}

impl SandboxHold for PodHold {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn ended(&mut self) -> std::pin::Pin<Box<dyn Future<Output = SandboxEnded> + Send + '_>> {
        Box::pin(async move {
            loop {
                if let PodState::Ended(ended) = &*self.state.borrow_and_update() {
                    return ended.clone();
                }
                if self.state.changed().await.is_err() {
                    return SandboxEnded {
                        success: false,
                        status: "the pod watcher stopped".into(),
                    };
                }
            }
        })
    }

    fn kill(self: Box<Self>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if !matches!(*self.state.borrow(), PodState::Ended(_)) {
                let copied =
                    tokio::time::timeout(COPY_TIMEOUT, copy_out(&self.worker, &self.workspace))
                        .await;
                match copied {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(pod = %self.name, error = %e,
                        "cannot copy the workspace out of the pod; it is lost"),
                    Err(_) => tracing::warn!(pod = %self.name,
                        "copying the workspace out of the pod timed out; it is lost"),
                }
            }
            delete_pod(&self.pods, &self.name).await;
            let mut state = self.state;
            let _ = tokio::time::timeout(DELETE_TIMEOUT, async {
                while !matches!(*state.borrow_and_update(), PodState::Ended(_)) {
                    if state.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            self.states.lock().expect("pod states").remove(&self.name);
            let mut names = self.names.lock().expect("pod names");
            if names.get(&self.sandbox) == Some(&self.name) {
                names.remove(&self.sandbox);
            }
        })
    }
}

/// The worker pod of a sandbox.
pub fn worker_pod(
    config: &KubernetesSandbox,
    owner: &PodOwner,
    owner_ref: Option<OwnerReference>,
    spec: &SandboxSpec,
    name: &str,
) -> Pod {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "cadre".to_string()),
        (LABEL_COMPONENT.to_string(), COMPONENT_WORKER.to_string()),
        (LABEL_CLUSTER.to_string(), label_value(&owner.cluster)),
        (LABEL_NODE.to_string(), label_value(&owner.node)),
        (LABEL_TENANT.to_string(), label_value(&spec.tenant)),
        (LABEL_SANDBOX.to_string(), label_value(&spec.id)),
        (LABEL_EGRESS.to_string(), spec.egress.to_string()),
    ]);
    let mut limits = BTreeMap::new();
    if let Some(memory) = spec.memory_bytes {
        limits.insert("memory".to_string(), Quantity(memory.to_string()));
    }
    if let Some(cpus) = spec.cpus {
        limits.insert(
            "cpu".to_string(),
            Quantity(format!("{}m", (cpus * 1000.0).ceil() as u64)),
        );
    }
    // The workspace's emptyDir counts against ephemeral storage.
    let workspace_limit = spec.workspace_quota.map(|q| Quantity(q.to_string()));
    if let Some(q) = &workspace_limit {
        limits.insert("ephemeral-storage".to_string(), q.clone());
    }
    let command = vec![
        "cadre".to_string(),
        "worker".to_string(),
        "--workspace".to_string(),
        WORKSPACE.to_string(),
        "--listen".to_string(),
        format!("0.0.0.0:{WORKER_PORT}"),
        "--tls-cert".to_string(),
        format!("{TLS_DIR}/tls.crt"),
        "--tls-key".to_string(),
        format!("{TLS_DIR}/tls.key"),
        "--client-ca".to_string(),
        format!("{TLS_DIR}/ca.crt"),
    ];
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let empty_dir = |name: &str, medium: Option<&str>, size: Option<Quantity>| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_string),
            size_limit: size,
        }),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_TENANT.to_string(),
                spec.tenant.clone(),
            )])),
            owner_references: owner_ref.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            runtime_class_name: config.runtime_class.clone(),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // A dead worker is a dead sandbox: the pool starts another.
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(5),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WORKER_UID),
                run_as_group: Some(WORKER_UID),
                fs_group: Some(WORKER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: "worker".into(),
                image: Some(config.image.clone()),
                command: Some(command),
                ports: Some(vec![ContainerPort {
                    name: Some("worker".into()),
                    container_port: i32::from(WORKER_PORT),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                resources: Some(ResourceRequirements {
                    requests: Some(limits.clone()),
                    limits: Some(limits),
                    ..Default::default()
                }),
                readiness_probe: Some(Probe {
                    tcp_socket: Some(TCPSocketAction {
                        port: IntOrString::Int(i32::from(WORKER_PORT)),
                        host: None,
                    }),
                    period_seconds: Some(1),
                    ..Default::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    privileged: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: None,
                    }),
                    ..Default::default()
                }),
                volume_mounts: Some(vec![
                    mount("workspace", WORKSPACE, false),
                    mount("tmp", "/tmp", false),
                    mount("tls", TLS_DIR, true),
                ]),
                ..Default::default()
            }],
            volumes: Some(vec![
                empty_dir("workspace", None, workspace_limit),
                empty_dir("tmp", Some("Memory"), Some(Quantity("64Mi".into()))),
                Volume {
                    name: "tls".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(config.worker_secret.clone()),
                        default_mode: Some(0o440),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The state of a pod, from its status.
pub fn pod_state(pod: &Pod) -> PodState {
    let ended = |success: bool, status: String| PodState::Ended(SandboxEnded { success, status });
    if pod.metadata.deletion_timestamp.is_some() {
        return ended(false, "pod deleted".into());
    }
    let Some(status) = &pod.status else {
        return PodState::Pending(None);
    };
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref());
    let terminated = container.and_then(|s| s.terminated.as_ref()).map(|t| {
        let reason = t.reason.clone().unwrap_or_else(|| "Error".into());
        match t.signal {
            Some(signal) => format!("{reason}: signal {signal}"),
            None => format!("{reason}: exit code {}", t.exit_code),
        }
    });
    match status.phase.as_deref() {
        Some("Failed") => {
            let why = match (&status.reason, &status.message, terminated) {
                (Some(reason), Some(message), _) => format!("{reason}: {message}"),
                (Some(reason), None, _) => reason.clone(),
                (None, _, Some(t)) => t,
                (None, Some(message), None) => message.clone(),
                (None, None, None) => "failed".into(),
            };
            ended(false, why)
        }
        Some("Succeeded") => ended(true, terminated.unwrap_or_else(|| "exited: 0".into())),
        _ => {
            if let Some(t) = terminated {
                return ended(false, t);
            }
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            match &status.pod_ip {
                Some(ip) if ready && status.phase.as_deref() == Some("Running") => {
                    PodState::Ready(ip.clone())
                }
                _ => PodState::Pending(container.and_then(|s| s.waiting.as_ref()).map(|w| {
                    format!(
                        "{}{}",
                        w.reason.clone().unwrap_or_default(),
                        w.message
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    )
                })),
            }
        }
    }
}

/// The name of pod `generation` of sandbox `id` of node `node`: a DNS subdomain of them,
/// lowercased.
pub fn pod_name(node: &str, id: &str, generation: u64) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '-') => c,
                _ => '-',
            })
            .collect()
    };
    let prefix = format!("cadre-{}-{}", clean(node), clean(id));
    let prefix: String = prefix.chars().take(240).collect();
    format!(
        "{}-{:x}",
        prefix.trim_end_matches('-'),
        generation & 0xffff_ffff
    )
}

/// `value` as a label value: itself if it is one, else its characters outside a label's
/// replaced and cut to 63, with a hash of the whole so that names stay apart.
pub fn label_value(value: &str) -> String {
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (value.is_empty()
            || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())));
    if valid && !value.is_empty() {
        return value.to_string();
    }
    if value.is_empty() {
        return "none".into();
    }
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let kept: String = value
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(46)
        .collect();
    format!("{}-{hash:016x}", kept.trim_matches('-'))
        .trim_start_matches('-')
        .to_string()
}

/// Follows the node's worker pods into `states` until aborted.
async fn watch_pods(
    pods: Api<Pod>,
    selector: String,
    states: Arc<Mutex<HashMap<String, watch::Sender<PodState>>>>,
) {
    let mut events = std::pin::pin!(watcher(pods, watcher::Config::default().labels(&selector)));
    let set = |name: String, state: PodState| {
        let mut states = states.lock().expect("pod states");
        // A pod that ends unwatched (one already let go) needs no entry.
        if matches!(state, PodState::Ended(_)) && !states.contains_key(&name) {
            return;
        }
        let sender = states
            .entry(name)
            .or_insert_with(|| watch::channel(PodState::Pending(None)).0);
        sender.send_if_modified(|current| {
            // An ended pod stays ended.
            if matches!(current, PodState::Ended(_)) || *current == state {
                return false;
            }
            *current = state;
            true
        });
    };
    // Pods seen in the relist after a watch broke; those not seen again are gone.
    let mut relisted: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                let Some(name) = pod.metadata.name.clone() else {
                    continue;
                };
                if let Some(seen) = &mut relisted {
                    seen.insert(name.clone());
                }
                set(name, pod_state(&pod));
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(name) = pod.metadata.name.clone() {
                    let status = match pod_state(&pod) {
                        PodState::Ended(e) => e.status,
                        _ => "pod deleted".into(),
                    };
                    set(
                        name,
                        PodState::Ended(SandboxEnded {
                            success: false,
                            status,
                        }),
                    );
                }
            }
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitDone) => {
                let Some(seen) = relisted.take() else {
                    continue;
                };
                let gone: Vec<String> = states
                    .lock()
                    .expect("pod states")
                    .keys()
                    .filter(|name| !seen.contains(*name))
                    .cloned()
                    .collect();
                for name in gone {
                    // Only pods that were there: one being created is not in the list yet.
                    let was_there = states
                        .lock()
                        .expect("pod states")
                        .get(&name)
                        .is_some_and(|s| !matches!(*s.borrow(), PodState::Pending(None)));
                    if was_there {
                        set(
                            name,
                            PodState::Ended(SandboxEnded {
                                success: false,
                                status: "pod deleted".into(),
                            }),
                        );
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching worker pods; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Deletes pod `name` at once (a sandbox killed); a pod already gone is fine.
async fn delete_pod(pods: &Api<Pod>, name: &str) {
    match pods
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(pod = name, error = %api_error(&e, "delete", "pods"), "cannot delete a worker pod")
        }
    }
}

/// An API error in words; a refusal names the verb the node's Role lacks.
fn api_error(e: &kube::Error, verb: &str, what: &str) -> SandboxError {
    match e {
        kube::Error::Api(status) if status.code == 403 => SandboxError::Unavailable(format!(
            "kubernetes refused to {verb} {what}: the node's Role needs verb `{verb}` on \
             `pods` ({})",
            status.message
        )),
        kube::Error::Api(status) => SandboxError::Unavailable(format!(
            "kubernetes: cannot {verb} {what}: {} ({})",
            status.message, status.code
        )),
        other => SandboxError::Unavailable(format!("kubernetes: cannot {verb} {what}: {other}")),
    }
}

fn json_owner(owner: Option<&OwnerReference>) -> serde_json::Value {
    serde_json::to_value(owner.map(|o| vec![o.clone()]).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null)
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Copies the node's workspace `dir` into a pod's workspace.
async fn copy_in(worker: &WorkerClient<Channel>, dir: &Path) -> Result<(), String> {
    let mut worker = worker.clone();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let rel = rel.join(entry.file_name());
            let kind = entry.file_type().map_err(|e| e.to_string())?;
            if kind.is_dir() {
                pending.push(rel);
            } else if kind.is_file() {
                let content = tokio::fs::read(dir.join(&rel))
                    .await
                    .map_err(|e| format!("{}: {e}", rel.display()))?;
                let request = WriteFileRequest {
                    path: rel.to_string_lossy().into_owned(),
                    content,
                };
                worker
                    .write_file(request)
                    .await
                    .map_err(|s| s.message().to_string())?;
            }
        }
    }
    Ok(())
}

/// Copies a pod's workspace into the node's workspace `dir`, replacing what was there.
async fn copy_out(worker: &WorkerClient<Channel>, dir: &Path) -> Result<(), String> {
    let mut worker = worker.clone();
    let staging = dir.with_extension("copying");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let listed = worker
            .list_files(ListFilesRequest { path: rel.clone() })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        for entry in listed.entries {
            let path = if rel.is_empty() {
                entry.name.clone()
            } else {
                format!("{rel}/{}", entry.name)
            };
            if entry.dir {
                std::fs::create_dir_all(staging.join(&path)).map_err(|e| e.to_string())?;
                pending.push(path);
            } else {
                let content = worker
                    .read_file(ReadFileRequest { path: path.clone() })
                    .await
                    .map_err(|s| format!("{path}: {}", s.message()))?
                    .into_inner()
                    .content;
                tokio::fs::write(staging.join(&path), content)
                    .await
                    .map_err(|e| format!("{path}: {e}"))?;
            }
        }
    }
    // Replace the node's copy only once the pod's is complete.
    if dir.exists() {
        clear_dir(dir).map_err(|e| e.to_string())?;
    } else {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    for entry in std::fs::read_dir(&staging)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        std::fs::rename(entry.path(), dir.join(entry.file_name())).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// Removes what `dir` holds, keeping `dir` (it may be a mount point).
fn clear_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KubernetesSandbox {
        KubernetesSandbox {
            image: "cadre:test".into(),
            namespace: None,
            runtime_class: Some("gvisor".into()),
            worker_secret: "cadre-worker-tls".into(),
            tls: cadre_actors::config::ClusterTls {
                cert_file: "client.crt".into(),
                key_file: "client.key".into(),
                ca_file: "ca.crt".into(),
            },
            kubeconfig: None,
            start_timeout: Duration::from_secs(10),
        }
    }

    fn spec(tenant: &str) -> SandboxSpec {
        SandboxSpec {
            id: "sbx-1a2b3c4d-7".into(),
            tenant: tenant.into(),
            workspace: "/data/workspaces/sbx-1a2b3c4d-7".into(),
            egress: false,
            memory_bytes: Some(512 << 20),
            cpus: Some(0.5),
            pids: Some(512),
            workspace_quota: Some(1 << 30),
        }
    }

    #[test]
    fn a_worker_pod_is_locked_down_labelled_and_limited() {
        let owner = PodOwner {
            cluster: "prod".into(),
            node: "cadre-0".into(),
            pod: Some("cadre-0".into()),
        };
        let pod = worker_pod(
            &config(),
            &owner,
            None,
            &spec("acme"),
            "cadre-cadre-0-sbx-1-7",
        );
        let value = serde_json::to_value(&pod).unwrap();
        assert_eq!(value["metadata"]["name"], "cadre-cadre-0-sbx-1-7");
        let labels = &value["metadata"]["labels"];
        assert_eq!(labels[LABEL_TENANT], "acme");
        assert_eq!(labels[LABEL_NODE], "cadre-0");
        assert_eq!(labels[LABEL_CLUSTER], "prod");
        assert_eq!(labels[LABEL_EGRESS], "false");
        let spec = &value["spec"];
        assert_eq!(spec["runtimeClassName"], "gvisor");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let container = &spec["containers"][0];
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["capabilities"]["drop"][0],
            "ALL"
        );
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(container["resources"]["limits"]["memory"], "536870912");
        assert_eq!(container["resources"]["limits"]["cpu"], "500m");
        assert_eq!(container["image"], "cadre:test");
    }

    #[test]
    fn names_and_labels_are_what_kubernetes_accepts() {
        assert_eq!(pod_name("Node_A", "sbx-1", 0x2a), "cadre-node-a-sbx-1-2a");
        assert_eq!(label_value("acme"), "acme");
        assert_eq!(label_value(""), "none");
        let odd =
            label_value("conversation:42/with spaces and a very long name indeed, longer than 63");
        assert!(odd.len() <= 63, "{odd}");
        assert!(
            odd.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{odd}"
        );
        assert_ne!(
            odd,
            label_value("conversation:42/with spaces and a very long name indeed, longer than 64")
        );
    }

    #[test]
    fn a_pod_status_says_whether_the_sandbox_is_ready_or_how_it_ended() {
        let pod = |status: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "p" }, "status": status
            }))
            .unwrap()
        };
        assert_eq!(
            pod_state(&pod(serde_json::json!({
                "phase": "Running", "podIP": "10.0.0.7",
                "conditions": [{ "type": "Ready", "status": "True" }]
            }))),
            PodState::Ready("10.0.0.7".into())
        );
        assert_eq!(
            pod_state(&pod(serde_json::json!({
                "phase": "Failed", "reason": "Evicted", "message": "low on memory"
            }))),
            PodState::Ended(SandboxEnded {
                success: false,
                status: "Evicted: low on memory".into()
            })
        );
        assert_eq!(
            pod_state(&pod(serde_json::json!({
                "phase": "Failed",
                "containerStatuses": [{ "name": "worker", "ready": false, "restartCount": 0,
                    "image": "i", "imageID": "",
                    "state": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } } }]
            }))),
            PodState::Ended(SandboxEnded {
                success: false,
                status: "OOMKilled: exit code 137".into()
            })
        );
        assert_eq!(
            pod_state(&pod(serde_json::json!({
                "phase": "Pending",
                "containerStatuses": [{ "name": "worker", "ready": false, "restartCount": 0,
                    "image": "i", "imageID": "",
                    "state": { "waiting": { "reason": "ImagePullBackOff", "message": "no such image" } } }]
            }))),
            PodState::Pending(Some("ImagePullBackOff: no such image".into()))
        );
    }
}
