//! Cluster membership over `ractor_cluster`: the node's `NodeServer`, the dialler that joins
//! the seeds and every member they name, and the heartbeats that decide whether each member is
//! `up`, `suspect` or `down` (`cadre_actors::membership`).
//!
//! Each node runs a `NodeServer` on `cluster.listen`. Its handshake proves both sides hold the
//! cookie (and the cluster's name, which is part of the secret the handshake checks); with
//! `cluster.tls` the connection is mutual TLS first. Every node has one membership actor in the
//! process group [`GROUP`]; `ractor_cluster` makes the actors of connected nodes members of
//! the group on each side, so a heartbeat is a message to each remote member of it. A heartbeat
//! carries the sender's facts (`NodeInfo`) and the cluster addresses it knows, so every node
//! finds every other through any one of them. ractor_cluster's own transitive connections are
//! off: they would bypass TLS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cadre_actors::config::{ClusterConfig, ClusterTls, read_cookie};
use cadre_actors::membership::{MemberState, Members, Refusal, Transition, refusal_by};
use cadre_actors::tls::{TlsError, provider, read_certs, read_key};
use cadre_proto::v1::{MemberHeartbeat, MemberRefusal, NodeInfo};
use prost::Message as _;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The process group of the membership actors, one per node.
pub const GROUP: &str = "cadre.members";

pub use cadre_actors::membership::{CONTROLLER, MEMBER};

/// This node's view of its cluster; cheap to clone.
#[derive(Clone)]
pub struct Membership {
    shared: Arc<Shared>,
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The cookie file is missing or too short.
    #[error("cluster.cookie_file: {0}")]
    Cookie(String),
    /// A TLS file is unusable.
    #[error("cluster.tls: {0}")]
    Tls(#[from] TlsError),
    /// The node server did not start (e.g. the port is taken).
    #[error("cannot listen for cluster connections on {addr}: {reason}")]
    Listen {
        /// `cluster.listen`.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
}

struct Shared {
    config: ClusterConfig,
    me: Mutex<NodeInfo>,
    members: Mutex<Members>,
    /// Cluster addresses heard of (seeds resolve anew each round).
    known: Mutex<HashSet<String>>,
    /// Set once the cluster refused this node: why.
    refused: watch::Sender<Option<String>>,
    /// Bumped on every change of a member's state.
    changed: watch::Sender<u64>,
    server: ActorRef<NodeServerMessage>,
    actor: Mutex<Option<ActorRef<Vec<u8>>>>,
    tls: Option<Tls>,
    /// Sessions that opened, and whether each authenticated.
    sessions: Mutex<HashMap<u64, (String, bool)>>,
    /// Cluster addresses dialled, and when (a handshake in flight is not dialled again).
    dialled: Mutex<HashMap<SocketAddr, Instant>>,
    /// This node's own cluster addresses (a seed list may name the node itself).
    selves: HashSet<SocketAddr>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    sandboxes: SandboxCount,
}

/// Fills in a node's sandboxes and its room for activations (`sandboxes`, `free_sandboxes`,
/// `free_slots`), for each heartbeat.
pub type SandboxCount = Box<dyn Fn(&mut NodeInfo) + Send + Sync>;

#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
}

impl Membership {
    /// Starts the node server on `config.listen`, the membership actor, the heartbeats and the
    /// dialler. `me` is this node's facts (its name, addresses, role and incarnation are
    /// filled in here); `sandboxes` fills in its sandboxes and room for each heartbeat.
    pub async fn start(
        config: &ClusterConfig,
        mut me: NodeInfo,
        sandboxes: SandboxCount,
    ) -> Result<Self, MembershipError> {
        let cookie = read_cookie(&config.cookie_file).map_err(MembershipError::Cookie)?;
        let host = advertised_host(config);
        me.name = config.node.clone();
        me.cluster = config.name.clone();
        me.cluster_address = format!("{host}:{}", config.listen.port());
        me.incarnation = uuid::Uuid::new_v4().simple().to_string();
        let (encryption, tls) = match &config.tls {
            Some(files) => {
                let (acceptor, connector) = tls_configs(files)?;
                (
                    Some(IncomingEncryptionMode::Tls(acceptor)),
                    Some(Tls { connector }),
                )
            }
            None => (None, None),
        };
        // The cluster's name is part of the secret: nodes of two clusters that share a cookie
        // still fail the handshake.
        let secret = format!("{}\n{cookie}", config.name);
        // ractor_cluster refuses a second session with a name it has, at the handshake, without
        // a word; naming each incarnation apart lets the heartbeats say what is wrong.
        let session_name = format!("{}#{}", config.node, me.incarnation);
        let server = NodeServer::new(
            config.listen.port(),
            secret,
            session_name,
            host.clone(),
            encryption,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(config.listen.ip());
        let (server, _) =
            Actor::spawn(None, server, ())
                .await
                .map_err(|e| MembershipError::Listen {
                    addr: config.listen,
                    reason: e.to_string(),
                })?;
        let mut selves: HashSet<SocketAddr> = HashSet::from([config.listen]);
        if config.listen.ip().is_unspecified() {
            selves.insert(SocketAddr::from(([127, 0, 0, 1], config.listen.port())));
        }
        if let Ok(addrs) = tokio::net::lookup_host(&me.cluster_address).await {
            selves.extend(addrs);
        }
        let shared = Arc::new(Shared {
            config: config.clone(),
            me: Mutex::new(me),
            members: Mutex::new(Members::new(config.failure_timeout)),
            known: Mutex::new(HashSet::new()),
            refused: watch::channel(None).0,
            changed: watch::channel(0).0,
            server: server.clone(),
            actor: Mutex::new(None),
            tls,
            sessions: Mutex::new(HashMap::new()),
            dialled: Mutex::new(HashMap::new()),
            selves,
            tasks: Mutex::new(Vec::new()),
            sandboxes,
        });
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "cadre.membership".into(),
                subscription: Box::new(SessionEvents(shared.clone())),
            })
            .map_err(|e| MembershipError::Listen {
                addr: config.listen,
                reason: e.to_string(),
            })?;
        let (actor, _) = Actor::spawn(None, MemberActor, shared.clone())
            .await
            .map_err(|e| MembershipError::Listen {
                addr: config.listen,
                reason: e.to_string(),
            })?;
        ractor::pg::join(GROUP.to_string(), vec![actor.get_cell()]);
        *shared.actor.lock().expect("actor") = Some(actor);
        let heartbeats = tokio::spawn(heartbeat_loop(shared.clone()));
        let dialler = tokio::spawn(dial_loop(shared.clone()));
        shared
            .tasks
            .lock()
            .expect("tasks")
            .extend([heartbeats, dialler]);
        let weak = Arc::downgrade(&shared);
        cadre_actors::metrics::metrics().sample_with(
            "cluster_members",
            Box::new(move |m| {
                let Some(shared) = weak.upgrade() else {
                    return false;
                };
                let members = shared.members.lock().expect("members").list(Instant::now());
                for state in [MemberState::Up, MemberState::Suspect, MemberState::Down] {
                    // This node is up, and not among its own members.
                    let this = usize::from(state == MemberState::Up);
                    let n = this + members.iter().filter(|(_, s)| *s == state).count();
                    m.cluster_members
                        .get_or_create(&cadre_actors::metrics::MemberLabels {
                            state: state.as_str(),
                        })
                        .set(n as i64);
                }
                true
            }),
        );
        tracing::info!(
            cluster = %config.name,
            node = %config.node,
            listen = %config.listen,
            seeds = ?config.seeds,
            tls = config.tls.is_some(),
            "cluster membership started"
        );
        Ok(Self { shared })
    }

    /// Every member, this node first (always `up`), then the others by name.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let now = Instant::now();
        let mut me = self.me();
        me.state = MemberState::Up.as_str().into();
        let mut out = vec![me];
        let members = self.shared.members.lock().expect("members");
        for (mut info, state) in members.list(now) {
            info.state = state.as_str().into();
            out.push(info);
        }
        out
    }

    /// The member named `name` (this node too), if it is known.
    pub fn node(&self, name: &str) -> Option<NodeInfo> {
        self.nodes().into_iter().find(|n| n.name == name)
    }

    /// The node that holds the log, unless it is `down` (this node, if it is the controller).
    pub fn controller(&self) -> Option<NodeInfo> {
        {
            let me = self.shared.me.lock().expect("me");
            if me.role == CONTROLLER {
                return Some(me.clone());
            }
        }
        self.shared
            .members
            .lock()
            .expect("members")
            .find_role(CONTROLLER, Instant::now())
    }

    /// This node's name.
    pub fn name(&self) -> String {
        self.shared.config.node.clone()
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.shared.config.name
    }

    /// The failure timeout: a member silent this long is `down`.
    pub fn failure_timeout(&self) -> Duration {
        self.shared.config.failure_timeout
    }

    /// Why the cluster refused this node, once it has (the node should stop).
    pub fn refused(&self) -> watch::Receiver<Option<String>> {
        self.shared.refused.subscribe()
    }

    /// Changes whenever a member's state changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Leaves the cluster: no more heartbeats, connections closed.
    pub fn stop(&self) {
        for task in self.shared.tasks.lock().expect("tasks").drain(..) {
            task.abort();
        }
        if let Some(actor) = self.shared.actor.lock().expect("actor").take() {
            actor.stop(None);
        }
        self.shared.server.stop(None);
    }

    fn me(&self) -> NodeInfo {
        let mut me = self.shared.me.lock().expect("me").clone();
        (self.shared.sandboxes)(&mut me);
        me
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.server.stop(None);
    }
}

/// The host the other nodes reach this one at.
fn advertised_host(config: &ClusterConfig) -> String {
    if let Some(host) = &config.advertise {
        return host.clone();
    }
    let ip = config.listen.ip();
    if ip.is_unspecified() {
        cadre_actors::config::host_name()
    } else {
        ip.to_string()
    }
}

/// The acceptor and connector of mutual TLS between nodes: each presents its certificate, and
/// accepts only peers with one from the CA.
fn tls_configs(
    files: &ClusterTls,
) -> Result<(tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector), TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&files.ca_file)? {
        roots.add(cert)?;
    }
    let roots = Arc::new(roots);
    let certs = read_certs(&files.cert_file)?;
    let key = read_key(&files.key_file)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::File {
            path: files.ca_file.clone(),
            reason: e.to_string(),
        })?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    ))
}

/// The membership actor: takes the heartbeats and refusals other nodes send.
struct MemberActor;

impl Actor for MemberActor {
    // Bytes of a `MemberHeartbeat`: a message that crosses nodes must be serializable.
    type Msg = Vec<u8>;
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        bytes: Vec<u8>,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Ok(heartbeat) = MemberHeartbeat::decode(bytes.as_slice()) else {
            tracing::warn!("cluster: a heartbeat that is not a MemberHeartbeat was dropped");
            return Ok(());
        };
        if let Some(refusal) = heartbeat.refusal {
            take_refusal(shared, refusal);
            return Ok(());
        }
        let Some(info) = heartbeat.node else {
            return Ok(());
        };
        let me = shared.me.lock().expect("me").clone();
        if let Some(refusal) = refusal_by(&me, &info) {
            refuse(shared, &info, refusal);
            return Ok(());
        }
        {
            let mut known = shared.known.lock().expect("known");
            known.insert(info.cluster_address.clone());
            known.extend(heartbeat.members);
        }
        let heard = shared
            .members
            .lock()
            .expect("members")
            .heard(info.clone(), Instant::now());
        match heard {
            Ok(Some(transition)) => announce(shared, &transition),
            Ok(None) => {}
            Err(refusal) => refuse(shared, &info, refusal),
        }
        Ok(())
    }
}

/// Tells every node that `info`'s node may not join, and why; the node named stops.
fn refuse(shared: &Shared, info: &NodeInfo, refusal: Refusal) {
    tracing::error!(
        node = %info.name,
        address = %info.cluster_address,
        "cluster: refused a node: {refusal}"
    );
    let by = shared.me.lock().expect("me").name.clone();
    let message = MemberHeartbeat {
        refusal: Some(MemberRefusal {
            name: info.name.clone(),
            incarnation: info.incarnation.clone(),
            reason: refusal.to_string(),
            by,
        }),
        ..Default::default()
    };
    broadcast(&message.encode_to_vec());
}

/// A refusal arrived: if it names this incarnation, this node may not be a member.
fn take_refusal(shared: &Shared, refusal: MemberRefusal) {
    let me = shared.me.lock().expect("me").clone();
    if refusal.name != me.name || refusal.incarnation != me.incarnation {
        return;
    }
    let why = format!(
        "the cluster `{}` refused this node (said by `{}`): {}",
        me.cluster, refusal.by, refusal.reason
    );
    tracing::error!("{why}");
    shared.refused.send_if_modified(|slot| {
        let first = slot.is_none();
        if first {
            *slot = Some(why);
        }
        first
    });
}

fn announce(shared: &Shared, transition: &Transition) {
    match (transition.from, transition.to) {
        (None, _) => tracing::info!(member = %transition.name, "cluster: a member joined"),
        (Some(MemberState::Down), MemberState::Up) => {
            tracing::info!(member = %transition.name, "cluster: a member is up again")
        }
        (_, MemberState::Up) => {
            tracing::info!(member = %transition.name, "cluster: a member is heard from again")
        }
        (_, MemberState::Suspect) => tracing::warn!(
            member = %transition.name,
            "cluster: a member is suspect (no heartbeat for half the failure timeout)"
        ),
        (_, MemberState::Down) => tracing::warn!(
            member = %transition.name,
            timeout_ms = shared.config.failure_timeout.as_millis() as u64,
            "cluster: a member is down (no heartbeat for the failure timeout)"
        ),
    }
    shared.changed.send_modify(|n| *n += 1);
}

/// Sends `bytes` to the membership actor of every other node connected.
fn broadcast(bytes: &[u8]) {
    for cell in ractor::pg::get_members(&GROUP.to_string()) {
        if cell.get_id().is_local() {
            continue;
        }
        let _ = cell.send_message::<Vec<u8>>(bytes.to_vec());
    }
}

/// Sends this node's heartbeat to every other node, and notes members that went suspect or
/// down, eight times per failure timeout.
async fn heartbeat_loop(shared: Arc<Shared>) {
    let every = (shared.config.failure_timeout / 8).max(Duration::from_millis(25));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: BTreeMap<String, MemberState> = BTreeMap::new();
    let mut last_tick = Instant::now();
    loop {
        ticks.tick().await;
        let gap = last_tick.elapsed();
        last_tick = Instant::now();
        if gap > shared.config.failure_timeout / 2 {
            tracing::warn!(
                stalled_ms = gap.as_millis() as u64,
                "cluster: this node stalled (paused or starved); the members' silence meanwhile \
                 is not held against them"
            );
            shared
                .members
                .lock()
                .expect("members")
                .stalled(gap.saturating_sub(every));
        }
        let mut me = shared.me.lock().expect("me").clone();
        (shared.sandboxes)(&mut me);
        me.last_heard_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let members: Vec<String> = shared
            .known
            .lock()
            .expect("known")
            .iter()
            .cloned()
            .collect();
        let heartbeat = MemberHeartbeat {
            node: Some(me),
            members,
            refusal: None,
        };
        broadcast(&heartbeat.encode_to_vec());
        let transitions = shared
            .members
            .lock()
            .expect("members")
            .transitions(&mut seen, Instant::now());
        for t in transitions.iter().filter(|t| t.to != MemberState::Up) {
            announce(&shared, t);
        }
    }
}

/// Dials every seed and every member heard of that no session reaches yet, twice per failure
/// timeout, so the nodes may start in any order and a restarted node is found again.
async fn dial_loop(shared: Arc<Shared>) {
    let every = (shared.config.failure_timeout / 2).max(Duration::from_millis(100));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut targets: Vec<String> = shared.config.seeds.clone();
        targets.extend(shared.known.lock().expect("known").iter().cloned());
        let connected = connected_peers(&shared).await;
        let mut addrs = HashSet::new();
        for target in targets {
            match tokio::net::lookup_host(&target).await {
                Ok(resolved) => addrs.extend(resolved.map(|a| (a, target.clone()))),
                Err(e) => tracing::debug!(%target, error = %e, "cluster: cannot resolve a seed"),
            }
        }
        for (addr, name) in addrs {
            if shared.selves.contains(&addr) || connected.contains(&addr) {
                continue;
            }
            {
                let mut dialled = shared.dialled.lock().expect("dialled");
                if dialled
                    .get(&addr)
                    .is_some_and(|at| at.elapsed() < shared.config.failure_timeout)
                {
                    continue;
                }
                dialled.insert(addr, Instant::now());
            }
            let shared = shared.clone();
            tokio::spawn(async move { dial(&shared, addr, &name).await });
        }
    }
}

/// The cluster addresses of the peers this node has an authenticated session with.
async fn connected_peers(shared: &Shared) -> HashSet<SocketAddr> {
    let sessions = match ractor::call!(shared.server, NodeServerMessage::GetSessions) {
        Ok(sessions) => sessions,
        Err(_) => return HashSet::new(),
    };
    let authenticated: HashSet<u64> = shared
        .sessions
        .lock()
        .expect("sessions")
        .iter()
        .filter(|(_, (_, ok))| *ok)
        .map(|(id, _)| *id)
        .collect();
    let mut out = HashSet::new();
    for (id, session) in sessions {
        let Some(peer) = session.peer_name else {
            continue;
        };
        if !authenticated.contains(&id) {
            continue;
        }
        if let Ok(addrs) = tokio::net::lookup_host(&peer.connection_string).await {
            out.extend(addrs);
        }
    }
    out
}

async fn dial(shared: &Shared, addr: SocketAddr, name: &str) {
    let result = match &shared.tls {
        Some(tls) => {
            let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
            let server_name = match ServerName::try_from(host.to_string()) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(%name, error = %e, "cluster: not a TLS server name");
                    return;
                }
            };
            ractor_cluster::client_connect_enc(
                &shared.server,
                addr,
                tls.connector.clone(),
                server_name,
            )
            .await
        }
        None => ractor_cluster::client_connect(&shared.server, addr).await,
    };
    match result {
        Ok(()) => tracing::debug!(%addr, "cluster: connection opened"),
        Err(ractor_cluster::ClientConnectErr::Encryption(e)) => {
            tracing::error!(%addr, error = %e, "cluster: the TLS handshake failed")
        }
        // A peer that is down refuses connections; it is dialled again.
        Err(e) => tracing::debug!(%addr, error = %e, "cluster: cannot connect"),
    }
}

/// Notes sessions as they open, authenticate and close: a session that closes before it
/// authenticated failed the handshake, and both sides say so.
struct SessionEvents(Arc<Shared>);

impl NodeEventSubscription for SessionEvents {
    fn node_session_opened(&self, session: NodeServerSessionInformation) {
        self.0
            .sessions
            .lock()
            .expect("sessions")
            .insert(session.node_id, (session.peer_addr.clone(), false));
    }

    fn node_session_authenticated(&self, session: NodeServerSessionInformation) {
        if let Some(entry) = self
            .0
            .sessions
            .lock()
            .expect("sessions")
            .get_mut(&session.node_id)
        {
            entry.1 = true;
        }
    }

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        let entry = self
            .0
            .sessions
            .lock()
            .expect("sessions")
            .remove(&session.node_id);
        match entry {
            Some((peer, false)) => tracing::error!(
                peer = %peer,
                incoming = session.is_server,
                "cluster: the handshake failed: the peer's cookie or cluster name differs from \
                 this node's (cluster `{}`), or its certificate is not of this cluster's CA",
                self.0.config.name
            ),
            _ => {
                if let Some(name) = session.peer_name.map(|p| member_name(&p.name)) {
                    tracing::info!(member = %name, "cluster: the connection to a member closed");
                    self.0.members.lock().expect("members").disconnected(&name);
                }
            }
        }
    }
}

/// A member's name from its session name (`NAME#INCARNATION@HOST`).
fn member_name(session_name: &str) -> String {
    let name = session_name.split('@').next().unwrap_or(session_name);
    name.split('#').next().unwrap_or(name).to_string()
}
