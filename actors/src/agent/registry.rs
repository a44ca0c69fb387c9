//! The agents a node can run: `agent` children register here while they run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::AgentSpec;

/// The node's agents by id; cheap to clone.
#[derive(Clone, Default)]
pub struct AgentRegistry {
    inner: Arc<RwLock<BTreeMap<String, Registered>>>,
    /// One channel per remote agent address, shared by every step of every exec: a new
    /// connection per step costs a TCP (and HTTP/2) handshake each time. A channel reconnects
    /// by itself after a failure.
    remote: Arc<Mutex<std::collections::HashMap<String, tonic::transport::Channel>>>,
}

#[derive(Clone)]
pub(super) struct Registered {
    spec: AgentSpec,
    /// The actor that holds the registration.
    path: String,
    /// Start times of recent execs, for `execs_per_minute`.
    starts: Arc<Mutex<VecDeque<Instant>>>,
}

impl AgentRegistry {
    /// The registered definition of agent `id`, if one is running.
    pub fn get(&self, id: &str) -> Option<AgentSpec> {
        self.inner
            .read()
            .expect("agents")
            .get(id)
            .map(|r| r.spec.clone())
    }

    /// The ids of all registered agents, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.inner.read().expect("agents").keys().cloned().collect()
    }

    /// Counts an exec start against the agent's rate limit: `Err(limit)` if it is reached.
    pub fn admit(&self, id: &str) -> Result<(), u32> {
        let Some(r) = self.inner.read().expect("agents").get(id).cloned() else {
            return Ok(());
        };
        let Some(limit) = r.spec.execs_per_minute else {
            return Ok(());
        };
        let mut starts = r.starts.lock().expect("starts");
        let now = Instant::now();
        while starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            starts.pop_front();
        }
        if starts.len() >= limit as usize {
            return Err(limit);
        }
        starts.push_back(now);
        Ok(())
    }

    /// The channel to the remote agent at `address` (made on first use, connected lazily,
    /// with Nagle's algorithm off: a step's small frames must not wait for delayed ACKs).
    pub(super) fn remote_channel(
        &self,
        address: &str,
    ) -> Result<tonic::transport::Channel, String> {
        let mut channels = self.remote.lock().expect("remote channels");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(address.to_string())
            .map_err(|e| format!("`{address}` is not a URL: {e}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    pub(super) fn add(&self, id: &str, path: &str, spec: AgentSpec) -> Result<(), String> {
        let mut inner = self.inner.write().expect("agents");
        if let Some(other) = inner.get(id)
            && other.path != path
        {
            return Err(format!(
                "agent id `{id}` is already taken by `{}`",
                other.path
            ));
        }
        inner.insert(
            id.to_string(),
            Registered {
                spec,
                path: path.to_string(),
                starts: Arc::default(),
            },
        );
        Ok(())
    }

    pub(super) fn remove(&self, id: &str, path: &str) {
        let mut inner = self.inner.write().expect("agents");
        if inner.get(id).is_some_and(|r| r.path == path) {
            inner.remove(id);
        }
    }
}
