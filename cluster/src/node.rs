//! A node: one `cadre serve` process with its supervision tree and gRPC API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use cadre_actors::agent::AgentRegistry;
use cadre_actors::builtin::{
    BUILTIN_SERVER, SKILLS, SkillTools, WORKSPACE, WorkspaceTools, skill_tools, workspace_tools,
};
use cadre_actors::config::{ClusterConfig, ClusterTls, Config, SandboxConfig, read_cookie};
use cadre_actors::controller::Controller;
use cadre_actors::event_log::EventLog;
use cadre_actors::exec::{Execs, LocalClaims};
use cadre_actors::model::{ModelClient, OpenAiClient};
use cadre_actors::placement::PlacementConfig;
use cadre_actors::process_ledger;
use cadre_actors::skills::SkillRegistry;
use cadre_actors::spawned::SpawnedActors;
use cadre_actors::store::StoreError;
use cadre_actors::tools::ToolRegistry;
use cadre_actors::{
    ChildStatus, Services, StartError, SupervisorFlags, SupervisorRef, Tree, supervisor_child,
};
use cadre_proto::v1::NodeInfo;
use cadre_proto::v1::actors_server::ActorsServer;
use cadre_proto::v1::cluster_server::ClusterServer;
use cadre_proto::v1::log_server::LogServer;
use cadre_proto::v1::tools_server::ToolsServer;
use cadre_sandbox::{Placement, PoolConfig, WarmPool};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::activations::Activations;
use crate::grpc::actors::ActorsService;
use crate::grpc::auth::Access;
use crate::grpc::cluster::{ClusterService, Sandboxes};
use crate::grpc::conversations::ConversationsService;
use crate::grpc::log::LogService;
use crate::grpc::status::message_limit_layer;
use crate::grpc::tls::ReloadingTls;
use crate::grpc::tools::ToolsService;
use crate::guardian::Guardian;
use crate::leased_log::LeasedLog;
use crate::member_trees::MemberTrees;
use crate::membership::{CONTROLLER as CONTROLLER_ROLE, MEMBER as MEMBER_ROLE, Membership};
use crate::peers::Peers;
use crate::remote_log::RemoteLog;
use crate::store;
use crate::telemetry::HttpListener;
use cadre_proto::v1::conversations_server::ConversationsServer;
use tonic::server::NamedService;
use tonic::service::Routes;

/// Path of the root supervisor of the config's tree (the user's actors).
pub const ROOT: &str = "root";

/// Path of the supervisor of the node's own actors, a tree apart from the user's: nothing a
/// user actor does can stop it.
pub const SYSTEM: &str = "system";

/// Id of the controller under the system supervisor (path `system/controller`).
pub const CONTROLLER: &str = "controller";

/// Id of the dynamic supervisor that runs each exec's agent (path `system/agents`).
pub const AGENTS: &str = "agents";

/// The API address used when neither the command line nor the config names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";

/// What a node is started with.
pub struct NodeOptions {
    /// The node's configuration.
    pub config: Config,
    /// Where to serve the API; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The node's data dir: its store, workspaces and sandbox images.
    pub data_dir: PathBuf,
}

/// A running node.
pub struct Node {
    /// The live supervision tree.
    pub tree: Tree,
    /// The root supervisor of the config's tree.
    pub root: SupervisorRef,
    /// The supervisor of the node's own actors.
    system: SupervisorRef,
    system_exit: JoinHandle<()>,
    /// The event log: the controller here, or the cluster's controller node's.
    pub event_log: Arc<dyn EventLog>,
    /// Membership of the node's cluster, if it is in one.
    membership: Option<Membership>,
    /// Holds the data dir of a node without a store of its own.
    _data_dir_lock: Option<Arc<store::DataDirLock>>,
    /// A node without the log: the writer of its lifecycle events to the cluster's audit log.
    audit: Option<cadre_actors::controller::Audit>,
    /// On a shared store: the controller lease.
    leased: Option<LeasedLog>,
    /// The cluster's loops: exec takeover (`crate::takeover`), the members' trees, the lease.
    cluster_tasks: Vec<JoinHandle<()>>,
    /// The node's tool registry.
    pub tools: ToolRegistry,
    /// The address the API listens on.
    pub addr: SocketAddr,
    /// `/metrics` for Prometheus (`telemetry.metrics_listen`), if served.
    pub metrics: Option<HttpListener>,
    /// The web console (`console.listen`), if served.
    pub console: Option<HttpListener>,
    root_exit: JoinHandle<()>,
    stop_api: oneshot::Sender<()>,
    /// Set when the node starts to stop: open watches and follows end cleanly.
    stopping: tokio::sync::watch::Sender<bool>,
    health: tonic_health::server::HealthReporter,
    api: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The warm pool and the placement on it, if the node has sandboxes.
    sandboxes: Option<(WarmPool, Placement)>,
    /// Kills the node's processes if it dies without stopping them.
    _guardian: Guardian,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The API address cannot be bound. (The I/O error is its source: printed after it, once.)
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The data dir cannot be made absolute or created.
    #[error("cannot create data dir {path}")]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store cannot be opened.
    #[error("cannot open the event log: {0}")]
    Store(StoreError),
    /// The root supervisor did not start.
    #[error("the root supervisor failed to start: {0}")]
    Root(StartError),
    /// The API's reflection service cannot be built.
    #[error("cannot set up the API: {0}")]
    Api(String),
    /// A configured sandbox provider cannot be used, or the cadre binary cannot be found.
    #[error("sandboxes: {0}")]
    Sandbox(String),
    /// An HTTP listener of the node (metrics, the console) cannot be bound.
    #[error("{what}: cannot listen on {listen}")]
    Http {
        /// The config field that names it.
        what: &'static str,
        /// The address as configured.
        listen: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `cluster` section cannot be used (cookie, TLS, the cluster port).
    #[error("cluster: {0}")]
    Cluster(String),
    /// The ledger of the node's processes, or its guardian, cannot be set up.
    #[error("cannot guard the node's processes: {0}")]
    Processes(String),
    /// A configured model's client cannot be made.
    #[error("model `{id}`: {reason}")]
    Model {
        /// The model's id.
        id: String,
        /// What went wrong.
        reason: String,
    },
}

/// How long a stopping node waits for open API streams to end.
const API_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How a node ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeExit {
    /// Asked to stop; the tree shut down in order.
    Stopped,
    /// The root supervisor shut itself down (`auto_shutdown`: a significant child ended).
    RootExited,
    /// The supervisor of the node's own actors gave up.
    SystemExited,
    /// The cluster refused the node (another member has its name); the message says why.
    Refused(String),
}

/// Accepted API connections with Nagle's algorithm off: small gRPC frames must not wait for
/// delayed ACKs (that costs ~40 ms per round trip).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

impl Node {
    /// Binds the API, starts the root supervisor (and with it every configured child), then
    /// serves the API.
    pub async fn start(mut options: NodeOptions) -> Result<Self, NodeError> {
        // Sandbox bundles name host paths under it, and runsc needs them absolute.
        options.data_dir =
            std::path::absolute(&options.data_dir).map_err(|source| NodeError::DataDir {
                path: options.data_dir.clone(),
                source,
            })?;
        std::fs::create_dir_all(&options.data_dir).map_err(|source| NodeError::DataDir {
            path: options.data_dir.clone(),
            source,
        })?;
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: options.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| NodeError::Listen {
            addr: options.listen,
            source,
        })?;
        let tls = match options.config.api.tls.clone() {
            Some(files) => Some(Arc::new(
                ReloadingTls::load(files).map_err(|e| NodeError::Api(e.to_string()))?,
            )),
            None => None,
        };
        if let Some(tls) = &tls {
            reload_on_sighup(tls.clone()).map_err(|e| NodeError::Api(e.to_string()))?;
        }
        let cluster_name = options
            .config
            .cluster
            .as_ref()
            .map_or("cadre", |c| c.name.as_str());
        let home = store::open(&options.config.store, &options.data_dir, cluster_name)
            .map_err(NodeError::Store)?;
        // Only now that the data dir is this node's (the store holds its lock).
        let guardian = guard_processes(&options.data_dir)?;
        let tree = Tree::new();
        // A node without the log audits its own tree through the cluster's log, from its
        // first lifecycle event on (written once the controller node is reached).
        let member_audit = (!matches!(home, store::LogHome::Local(_))).then(|| tree.subscribe());
        // Sandboxed children (MCP servers) need the pool as they start.
        let owner = cadre_sandbox::PodOwner::of(
            &options.config,
            std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()),
        );
        let sandboxes = start_sandboxes(&options.config.sandbox, &options.data_dir, owner).await?;
        let pool_room = match &sandboxes {
            Sandboxes::Pool { pool, max, .. } => Some((pool.clone(), *max)),
            Sandboxes::Unavailable(_) => None,
        };
        let pool = match &sandboxes {
            Sandboxes::Pool {
                pool, placement, ..
            } => Some((pool.clone(), placement.clone())),
            Sandboxes::Unavailable(_) => None,
        };
        let holds_log = matches!(home, store::LogHome::Local(_));
        let node_name = options
            .config
            .cluster
            .as_ref()
            .map(|c| c.node.clone())
            .unwrap_or_default();
        let membership = match &options.config.cluster {
            Some(cluster) => Some(
                start_membership(
                    cluster,
                    node_info(addr, tls.is_some(), &sandboxes, holds_log),
                    sandboxes.clone(),
                )
                .await?,
            ),
            None => None,
        };
        // The nodes' credential with each other.
        let cluster_cookie = match &options.config.cluster {
            Some(cluster) => Some(read_cookie(&cluster.cookie_file).map_err(NodeError::Cluster)?),
            None => None,
        };
        // Calls to the other nodes' APIs: the controller node's log, their actors.
        let peers = match (&options.config.cluster, &membership, &cluster_cookie) {
            (Some(cluster), Some(membership), Some(cookie)) => Some(Peers::new(
                cookie.clone(),
                match &cluster.tls {
                    Some(files) => Some(peer_tls(files).map_err(NodeError::Cluster)?),
                    None => None,
                },
                membership.failure_timeout(),
            )),
            _ => None,
        };
        let mut data_dir_lock = None;
        let mut leased = None;
        let (controller, event_log): (Option<Controller>, Arc<dyn EventLog>) = match home {
            store::LogHome::Local(storage) => {
                let controller =
                    Controller::with_log(storage.store, storage.log, options.config.store.limits);
                controller.audit(&tree, &node_name);
                (Some(controller.clone()), Arc::new(controller))
            }
            store::LogHome::Cluster(lock) => {
                data_dir_lock = Some(lock);
                let (Some(peers), Some(membership)) = (&peers, &membership) else {
                    return Err(NodeError::Store(StoreError::Unavailable(
                        "store.cluster needs a `cluster` section".into(),
                    )));
                };
                (None, Arc::new(RemoteLog::new(membership, peers.clone())))
            }
            store::LogHome::Shared {
                store,
                lease_ttl,
                lock,
            } => {
                data_dir_lock = Some(lock);
                let (Some(peers), Some(membership)) = (&peers, &membership) else {
                    return Err(NodeError::Store(StoreError::Unavailable(
                        "store.foundationdb needs a `cluster` section".into(),
                    )));
                };
                let log = LeasedLog::new(
                    store,
                    lease_ttl,
                    options.config.store.limits,
                    membership,
                    peers.clone(),
                );
                leased = Some(log.clone());
                (None, Arc::new(log))
            }
        };
        if let Sandboxes::Pool { pool, provider, .. } = &sandboxes {
            audit_sandbox_ends(pool, provider, event_log.clone());
        }
        let mut models = std::collections::BTreeMap::new();
        for spec in &options.config.models {
            let client = OpenAiClient::new(spec.clone()).map_err(|e| NodeError::Model {
                id: spec.id.clone(),
                reason: e.to_string(),
            })?;
            models.insert(spec.id.clone(), Arc::new(client) as Arc<dyn ModelClient>);
        }
        let services = Services {
            host: pool
                .as_ref()
                .map(|(_, placement)| Arc::new(placement.clone()) as _),
            tools: ToolRegistry::new(),
            skills: SkillRegistry::default(),
            models: Arc::new(models),
            agents: AgentRegistry::default(),
        };
        register_builtins(&services);
        // The node's own actors have a tree of their own, started first and stopped last: the
        // controller, then the agents of execs. Each exec's agent is a transient child there:
        // a crash restarts it and it resumes from the log; one that ends is removed (dynamic).
        // The intensity allows for execs failing together (a store hiccup) before the failure
        // escalates.
        let agent_flags = SupervisorFlags {
            intensity: 50,
            period: std::time::Duration::from_secs(10),
            dynamic: true,
            ..SupervisorFlags::default()
        };
        let agents = supervisor_child(AGENTS, agent_flags, Vec::new());
        let mut system_children = Vec::new();
        if let Some(controller) = &controller {
            system_children.push(controller.child_spec(CONTROLLER));
        }
        system_children.push(agents);
        let user = &options.config.supervisor;
        let started = match SupervisorRef::start_root(
            SYSTEM,
            SupervisorFlags::default(),
            system_children,
            tree.clone(),
        )
        .await
        {
            Ok((system, system_exit)) => {
                match SupervisorRef::start_root(
                    ROOT,
                    user.flags.clone(),
                    user.child_specs(&services),
                    tree.clone(),
                )
                .await
                {
                    Ok(root) => Ok(((system, system_exit), root)),
                    Err(e) => {
                        system.shutdown().await;
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        let ((system, system_exit), (root, root_exit)) = match started {
            Ok(started) => started,
            Err(e) => {
                if let Some((pool, placement)) = &pool {
                    placement.shutdown();
                    pool.shutdown().await;
                }
                return Err(NodeError::Root(e));
            }
        };
        let mut activations = Activations::new(pool.as_ref().map(|(_, p)| p.clone()));
        if let (Some(membership), Some(peers)) = (&membership, &peers) {
            activations =
                activations.in_cluster(event_log.clone(), membership.clone(), peers.clone());
        }
        let mut cluster = ClusterService::new(
            node_info(addr, tls.is_some(), &sandboxes, holds_log),
            sandboxes,
            membership.clone(),
            activations,
        );
        let (stop_api, stopped) = oneshot::channel::<()>();
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let mut cluster_tasks = Vec::new();
        // What was spawned at run time comes back before the execs that may use it resume.
        if let Some(leased) = &leased {
            cluster = cluster.with_lease(leased.clone());
            cluster_tasks.push(leased.keep(system.clone(), stopping_rx.clone()));
            leased.wait_for_controller().await;
        } else if let Some(membership) = membership.as_ref().filter(|_| !holds_log) {
            wait_for_controller(membership)
                .await
                .map_err(NodeError::Cluster)?;
        }
        let audit = member_audit.map(|rx| {
            cadre_actors::controller::Audit::spawn(rx, event_log.clone(), node_name.clone())
        });
        let spawned = match &membership {
            Some(membership) => SpawnedActors::of_node(event_log.clone(), &membership.name()),
            None => SpawnedActors::new(event_log.clone()),
        };
        match spawned.restore(&tree, &services).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "started the spawned actors of the last run"),
            Err(e) => {
                root.shutdown().await;
                system.shutdown().await;
                if let Some((pool, placement)) = &pool {
                    placement.shutdown();
                    pool.shutdown().await;
                }
                return Err(NodeError::Store(e));
            }
        }
        let mut service = ActorsService::new(
            tree.clone(),
            ROOT,
            SYSTEM,
            vec![
                SYSTEM.to_string(),
                format!("{SYSTEM}/{CONTROLLER}"),
                format!("{SYSTEM}/{AGENTS}"),
            ],
            services.clone(),
            spawned,
            stopping_rx.clone(),
        );
        if let (Some(membership), Some(peers)) = (&membership, &peers) {
            let members = MemberTrees::new(membership.clone(), peers.clone());
            cluster_tasks.push(members.reflect(stopping_rx.clone()));
            service = service.in_cluster(members);
        }
        let tools = ToolsService::new(services.tools.clone(), event_log.clone());
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ActorsServer<ActorsService>>().await;
        health.set_serving::<ClusterServer<ClusterService>>().await;
        health.set_serving::<ToolsServer<ToolsService>>().await;
        health
            .set_serving::<ConversationsServer<ConversationsService>>()
            .await;
        cluster_tasks.push(
            crate::probes::serve(
                health.clone(),
                event_log.clone(),
                pool_room,
                stopping_rx.clone(),
            )
            .await,
        );
        let mut execs = Execs::new(
            event_log.clone(),
            tree.clone(),
            format!("{SYSTEM}/{AGENTS}"),
            Arc::new(LocalClaims::default()),
            services.clone(),
        );
        if let Some(membership) = &membership {
            execs = execs.on_node(membership.name(), holds_log);
        }
        if let Some(membership) = &membership {
            let every = membership.failure_timeout() / 4;
            cluster_tasks.push(crate::takeover::adopt(execs.clone(), every));
            if let Some(leased) = &leased {
                let acting = leased.clone();
                cluster_tasks.push(crate::takeover::reassign(
                    membership.clone(),
                    leased.served(),
                    every,
                    Arc::new(move || acting.is_controller()),
                ));
            } else if holds_log {
                cluster_tasks.push(crate::takeover::reassign(
                    membership.clone(),
                    event_log.clone(),
                    every,
                    Arc::new(|| true),
                ));
            }
        }
        let recovering = execs.clone();
        // A node without the log may start before the controller node is up: it recovers
        // once it can read the log.
        tokio::spawn(async move {
            let mut warned = false;
            while let Err(e) = recovering.recover().await {
                if !warned {
                    tracing::warn!(error = %e, "cannot recover execs yet; retrying");
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        let conversations = ConversationsService::new(execs, stopping_rx);
        // Only the services this node serves are advertised (the descriptor set also holds
        // `AgentService`, which remote agents serve, and `Worker`, served in sandboxes).
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(cadre_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(<ActorsServer<ActorsService> as NamedService>::NAME)
                .with_service_name(<ClusterServer<ClusterService> as NamedService>::NAME)
                .with_service_name(<ToolsServer<ToolsService> as NamedService>::NAME)
                .with_service_name(
                    <ConversationsServer<ConversationsService> as NamedService>::NAME,
                )
                .with_service_name("grpc.health.v1.Health")
        };
        let access = Access::new(options.config.api.tokens.clone(), Some(event_log.clone()))
            .with_cluster_cookie(cluster_cookie.clone());
        let mutual_tls = options
            .config
            .api
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        if !access.is_enabled() && !mutual_tls && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "listening beyond loopback without authentication: anyone who can reach this \
                 address controls the node; set api.tokens or --token-file"
            );
        }
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| NodeError::Api(e.to_string()))?;
        // Older grpcurl versions ask for v1alpha.
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| NodeError::Api(e.to_string()))?;
        let limit = options.config.api.max_message_bytes;
        let mut routes = Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                ActorsServer::new(service)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add_service(
                ClusterServer::new(cluster)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add_service(
                ToolsServer::new(tools)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add_service(
                ConversationsServer::new(conversations)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            );
        // The log is served to the cluster's other nodes: by the controller node, or on a
        // shared store by every node (the lease holder answers, the others refuse).
        let served_log = match &leased {
            Some(leased) => Some(leased.served()),
            None if holds_log => Some(event_log.clone()),
            None => None,
        };
        if let (Some(_), Some(served)) = (&cluster_cookie, served_log) {
            routes = routes.add_service(
                LogServer::new(LogService::new(served))
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        }
        let routes = routes.prepare();
        let server = tonic::transport::Server::builder()
            .layer(message_limit_layer(limit))
            .layer(access.layer());
        let stopped = async {
            let _ = stopped.await;
        };
        let api = match tls {
            Some(tls) => tokio::spawn(server.serve_with_incoming_shutdown(
                routes.clone(),
                crate::grpc::tls::incoming(listener, tls),
                stopped,
            )),
            None => tokio::spawn(server.serve_with_incoming_shutdown(
                routes.clone(),
                incoming(listener),
                stopped,
            )),
        };
        let metrics = match &options.config.telemetry.metrics_listen {
            Some(listen) => Some({
                cadre_actors::metrics::enable();
                HttpListener::serve(listen, crate::telemetry::metrics_app())
                    .await
                    .map_err(|source| NodeError::Http {
                        what: "telemetry.metrics_listen",
                        listen: listen.clone(),
                        source,
                    })?
            }),
            None => None,
        };
        let console = match &options.config.console {
            Some(console) if mutual_tls && !access.is_enabled() => {
                return Err(NodeError::Api(format!(
                    "console.listen {}: the API authenticates its callers by client \
                     certificate (api.tls.client_ca_file), which the console's browsers do not \
                     present; set api.tokens so the console can ask for one",
                    console.listen
                )));
            }
            Some(console) => {
                // The console calls the API in process, through the same layers as a client
                // over the network: its callers' tokens, roles and audit records are theirs.
                let in_process = tower::ServiceBuilder::new()
                    .layer(message_limit_layer(limit))
                    .layer(access.layer())
                    .service(routes);
                let api = crate::console::InProcessApi::new(in_process, limit);
                let app = crate::console::app(api, access.is_enabled());
                let listener =
                    HttpListener::serve(&console.listen, app)
                        .await
                        .map_err(|source| NodeError::Http {
                            what: "console.listen",
                            listen: console.listen.clone(),
                            source,
                        })?;
                if !access.is_enabled() && !listener.addr.ip().is_loopback() {
                    tracing::warn!(
                        addr = %listener.addr,
                        "the console listens beyond loopback without authentication: anyone \
                         who can reach it controls the node; set api.tokens"
                    );
                }
                Some(listener)
            }
            None => None,
        };
        tracing::info!(%addr, data_dir = %options.data_dir.display(), "cadre node serving");
        Ok(Self {
            tree,
            root,
            system,
            system_exit,
            event_log,
            membership,
            leased,
            _data_dir_lock: data_dir_lock,
            audit,
            cluster_tasks,
            tools: services.tools,
            addr,
            metrics,
            console,
            root_exit,
            stop_api,
            stopping,
            health,
            api,
            sandboxes: pool,
            _guardian: guardian,
        })
    }

    /// The node's cluster membership, if it is in a cluster.
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    /// Runs until `stop` resolves, the root supervisor shuts itself down (`auto_shutdown`) or
    /// the node's own supervisor gives up, then shuts the trees down in reverse start order
    /// (honouring every child's shutdown spec) and stops the API. A root supervisor that gives
    /// up (restart intensity exceeded) stays in the tree, stopped, and the node serves on.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> NodeExit {
        tokio::pin!(stop);
        let mut root_running = true;
        let mut refused = self.membership.as_ref().map(Membership::refused);
        let exit = loop {
            tokio::select! {
                Some(why) = cluster_refusal(refused.as_mut()) => {
                    self.stopping.send_replace(true);
                    if root_running {
                        self.root.shutdown().await;
                    }
                    break NodeExit::Refused(why);
                }
                _ = &mut stop => {
                    // Watches and follows end now, cleanly: their clients say the node stopped.
                    self.stopping.send_replace(true);
                    // Probes see the node leave before its actors do.
                    self.health.set_not_serving::<ActorsServer<ActorsService>>().await;
                    self.health.set_not_serving::<ClusterServer<ClusterService>>().await;
                    self.health.set_not_serving::<ToolsServer<ToolsService>>().await;
                    self.health
                        .set_not_serving::<ConversationsServer<ConversationsService>>()
                        .await;
                    self.health
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                    self.health
                        .set_service_status(
                            crate::probes::READY,
                            tonic_health::ServingStatus::NotServing,
                        )
                        .await;
                    // In a cluster its execs go on elsewhere: their agents stop first, before
                    // the tools they call (a call cut off by the stop would be journaled as
                    // the tool's failure), and the execs are handed over once all stopped.
                    if self.membership.is_some()
                        && let Err(e) = self.system.terminate_child(AGENTS).await
                    {
                        tracing::warn!(error = %e, "cannot stop the agents first");
                    }
                    tracing::info!("shutting down the supervision trees");
                    if root_running {
                        self.root.shutdown().await;
                    }
                    break NodeExit::Stopped;
                }
                _ = &mut self.root_exit, if root_running => {
                    root_running = false;
                    let gave_up = self
                        .tree
                        .snapshot(ROOT)
                        .is_some_and(|root| root.status == ChildStatus::Stopped);
                    if gave_up {
                        tracing::error!(
                            "the root supervisor gave up (reached_max_restart_intensity); \
                             the node serves on without the config's actors (see `cadre tree`)"
                        );
                        continue;
                    }
                    tracing::warn!("the root supervisor shut itself down (auto_shutdown); stopping the node");
                    self.stopping.send_replace(true);
                    break NodeExit::RootExited;
                }
                _ = &mut self.system_exit => {
                    tracing::error!("the node's own supervisor gave up; stopping the node");
                    self.stopping.send_replace(true);
                    if root_running {
                        self.root.shutdown().await;
                    }
                    break NodeExit::SystemExited;
                }
            }
        };
        // Before the agents stop: their execs must not be taken up again here meanwhile.
        for task in &self.cluster_tasks {
            task.abort();
        }
        if exit != NodeExit::SystemExited {
            self.system.shutdown().await;
        }
        if let Some(audit) = self.audit.take() {
            audit.flush().await;
        }
        if let Some(leased) = &self.leased {
            leased.give_up().await;
        }
        if let Some(membership) = &self.membership {
            // Its agents have stopped: its open execs go to the other nodes now, not once it
            // is seen down.
            if exit == NodeExit::Stopped {
                match crate::takeover::hand_over(membership, self.event_log.as_ref(), HAND_OVER)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(execs = n, "handed the open execs to other nodes"),
                    Err(e) => tracing::warn!(error = %e,
                        "cannot hand the open execs over; they move once this node is seen down"),
                }
            }
            membership.stop();
        }
        if let Some((pool, placement)) = &self.sandboxes {
            placement.shutdown();
            pool.shutdown().await;
        }
        let _ = self.stop_api.send(());
        // A graceful stop waits for open streams, and an exec's stream only ends with its exec:
        // one whose agent was stopped with the tree would hold the node forever. Its client
        // reconnects to the next run (the exec resumes there).
        match tokio::time::timeout(API_GRACE, &mut self.api).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "API server ended with an error"),
            Ok(_) => {}
            Err(_) => {
                tracing::info!("closing the streams still open");
                self.api.abort();
            }
        }
        tracing::info!(?exit, "cadre node stopped");
        exit
    }
}

/// Waits until a node without the log knows the cluster's controller node: everything it
/// does needs the log, starting with the actors it spawned in its last run.
async fn wait_for_controller(membership: &Membership) -> Result<(), String> {
    let mut changes = membership.changes();
    let refused = membership.refused();
    let mut rounds = 0u32;
    while membership.controller().is_none() {
        if let Some(why) = refused.borrow().clone() {
            membership.stop();
            return Err(why);
        }
        // Said at once, then every 10 s.
        if rounds.is_multiple_of(100) {
            tracing::info!(
                cluster = membership.cluster(),
                "waiting for the cluster's controller node (the node with store.embedded)"
            );
        }
        rounds += 1;
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(100), changes.changed()).await;
    }
    Ok(())
}

/// Resolves with the reason once the cluster refuses the node (never without a cluster).
async fn cluster_refusal(
    refused: Option<&mut tokio::sync::watch::Receiver<Option<String>>>,
) -> Option<String> {
    let Some(refused) = refused else {
        return std::future::pending().await;
    };
    match refused.wait_for(Option::is_some).await {
        Ok(why) => why.clone(),
        Err(_) => std::future::pending().await,
    }
}

/// This node's facts as its cluster and `Cluster.Nodes` show them.
fn node_info(api: SocketAddr, api_tls: bool, sandboxes: &Sandboxes, holds_log: bool) -> NodeInfo {
    let (provider, isolated, status) = match sandboxes {
        Sandboxes::Pool {
            provider, isolated, ..
        } => (provider.to_string(), *isolated, "ready".to_string()),
        Sandboxes::Unavailable(why) => (String::new(), false, why.clone()),
    };
    NodeInfo {
        address: api.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        sandbox_provider: provider,
        isolated,
        sandbox_status: status,
        role: if holds_log {
            CONTROLLER_ROLE
        } else {
            MEMBER_ROLE
        }
        .into(),
        api_tls,
        ..Default::default()
    }
}

/// Joins the node's cluster; the API address it advertises uses `cluster.advertise` when the
/// API listens on every interface.
async fn start_membership(
    cluster: &ClusterConfig,
    mut me: NodeInfo,
    sandboxes: Sandboxes,
) -> Result<Membership, NodeError> {
    if let Ok(api) = me.address.parse::<SocketAddr>()
        && api.ip().is_unspecified()
    {
        let host = cluster
            .advertise
            .clone()
            .unwrap_or_else(cadre_actors::config::host_name);
        me.address = format!("{host}:{}", api.port());
    }
    let room = Box::new(move |me: &mut NodeInfo| sandboxes.fill_in(me));
    Membership::start(cluster, me, room)
        .await
        .map_err(|e| NodeError::Cluster(e.to_string()))
}

/// TLS of this node's calls to the controller node's API: the cluster's CA, and this node's
/// certificate for an API that asks for one.
fn peer_tls(files: &ClusterTls) -> Result<ClientTlsConfig, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cluster.tls: cannot read {}: {e}", path.display()))
    };
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca_file)?))
        .identity(Identity::from_pem(
            read(&files.cert_file)?,
            read(&files.key_file)?,
        )))
}

/// Reads the API's TLS files again on every SIGHUP.
fn reload_on_sighup(tls: Arc<ReloadingTls>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the API's TLS files again");
            tls.reload();
        }
    });
    Ok(())
}

/// Kills what an earlier run on `data_dir` left running, installs the process ledger there,
/// and starts the guardian that kills what this run leaves if it dies.
fn guard_processes(data_dir: &Path) -> Result<Guardian, NodeError> {
    let fail = |e: std::io::Error| NodeError::Processes(e.to_string());
    let ledger = process_ledger::install(data_dir.join("processes")).map_err(fail)?;
    for pid in ledger.kill_all() {
        tracing::warn!(pid, "killed a process left running by the last run");
    }
    let cadre_bin = std::env::current_exe()
        .map_err(|e| NodeError::Processes(format!("cannot find the cadre binary: {e}")))?;
    Guardian::start(&cadre_bin, ledger, &data_dir.join(WORKSPACES)).map_err(fail)
}

/// How long a stopping node tries to hand its open execs over (a lease it gave up may take
/// this long to be taken).
const HAND_OVER: std::time::Duration = std::time::Duration::from_secs(10);

/// Where in the data dir the sandboxes' workspaces are.
const WORKSPACES: &str = "workspaces";

/// The built-in tools: skills always, workspaces where the node has sandboxes.
fn register_builtins(services: &Services) {
    let skills = SkillTools::new(services.skills.clone(), services.host.clone());
    let registered =
        services
            .tools
            .register(SKILLS, BUILTIN_SERVER, skill_tools(), Arc::new(skills));
    debug_assert!(registered.is_ok(), "a fresh registry");
    if let Some(host) = &services.host {
        let workspace = WorkspaceTools::new(host.clone());
        let registered = services.tools.register(
            WORKSPACE,
            BUILTIN_SERVER,
            workspace_tools(),
            Arc::new(workspace),
        );
        debug_assert!(registered.is_ok(), "a fresh registry");
    }
}

/// The node's warm pool on the configured provider. Without a `sandbox` section a missing
/// `runsc` only leaves the node without sandboxes; with one it stops the node.
async fn start_sandboxes(
    config: &SandboxConfig,
    data_dir: &Path,
    owner: cadre_sandbox::PodOwner,
) -> Result<Sandboxes, NodeError> {
    let worker_bin = std::env::current_exe()
        .map_err(|e| NodeError::Sandbox(format!("cannot find the cadre binary: {e}")))?;
    let provider = match cadre_sandbox::provider(config, data_dir, worker_bin, owner).await {
        Ok(p) => p,
        Err(e) if !config.configured => {
            tracing::warn!(error = %e, "no sandboxes on this node");
            return Ok(Sandboxes::Unavailable(e.to_string()));
        }
        Err(e) => return Err(NodeError::Sandbox(e.to_string())),
    };
    let pool = WarmPool::start(
        provider.clone(),
        PoolConfig {
            min: config.min,
            max: config.max,
            workspaces: data_dir.join(WORKSPACES),
            images: data_dir.join("sandboxes/images"),
            owners: data_dir.join("sandboxes/owners"),
            memory_bytes: config.memory_bytes,
            cpus: config.cpus,
            pids: config.pids,
            workspace_quota: workspace_quota(config.workspace_bytes),
            min_free_disk: config.min_free_disk_bytes,
            // Unique per run, so no sandbox reuses a workspace of an earlier run.
            name: format!("sbx-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        },
    );
    let placement = Placement::start(
        pool.clone(),
        PlacementConfig {
            slots_per_sandbox: config.slots_per_sandbox,
            idle_timeout: config.idle_timeout,
            ..PlacementConfig::default()
        },
    );
    Ok(Sandboxes::Pool {
        pool,
        placement,
        provider: provider.name(),
        isolated: provider.isolated(),
        min: config.min,
        max: config.max,
    })
}

/// Writes each sandbox that ends by itself (and why: `killed: memory limit 512 MiB`) to
/// `cadre.audit`, until the pool is gone.
fn audit_sandbox_ends(pool: &WarmPool, provider: &'static str, log: Arc<dyn EventLog>) {
    let mut died = pool.subscribe();
    tokio::spawn(async move {
        loop {
            let ended = match died.recv().await {
                Ok(ended) => ended,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "the audit log missed ended sandboxes");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let request = cadre_actors::controller::AppendRequest {
                conversation_id: cadre_actors::controller::AUDIT_CONVERSATION.into(),
                events: vec![cadre_actors::controller::NewEvent {
                    exec_id: String::new(),
                    kind: cadre_proto::v1::event::Kind::SandboxExited(
                        cadre_proto::v1::SandboxExited {
                            sandbox_id: ended.id,
                            tenant: ended.tenant.unwrap_or_default(),
                            provider: provider.into(),
                            reason: ended.status,
                        },
                    ),
                }],
                idempotency_key: None,
                open_exec: None,
                owner: None,
            };
            if let Err(e) = log.append(request).await {
                tracing::warn!(error = %e, "cannot write an ended sandbox to the audit log");
            }
        }
    });
}

/// The workspace quota the pool can enforce: its loop mounts need root.
fn workspace_quota(configured: Option<u64>) -> Option<u64> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if configured.is_some() && !root {
        tracing::warn!(
            "sandbox.workspace_mib needs root (each workspace is a loop-mounted filesystem): \
             workspaces are not bounded on this node"
        );
        return None;
    }
    configured
}
