//! Calls to the APIs of the cluster's other nodes: one channel per node address, each call
//! carrying the cluster's cookie as its bearer token (the credential nodes take from each
//! other) and bounded by the failure timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_proto::v1::NodeInfo;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The channels to the cluster's other nodes; cheap to clone.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

struct Inner {
    cookie: String,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
    /// By API address: a node that restarts on the same address reuses its channel, which
    /// reconnects by itself.
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    /// Calls with `cookie`; `tls` verifies the nodes whose API serves TLS; a call without an
    /// answer within `timeout` fails.
    pub fn new(cookie: String, tls: Option<ClientTlsConfig>, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                cookie,
                tls,
                timeout,
                channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Each call's deadline.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// A channel to `node`'s API (connected on first use), or why there is none.
    pub fn channel(&self, node: &NodeInfo) -> Result<Channel, String> {
        let mut channels = self.inner.channels.lock().expect("channels");
        if let Some(channel) = channels.get(&node.address) {
            return Ok(channel.clone());
        }
        let scheme = if node.api_tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", node.address))
            .map_err(|e| format!("node `{}`: address `{}`: {e}", node.name, node.address))?
            .tcp_nodelay(true)
            .connect_timeout(self.inner.timeout);
        if node.api_tls {
            let tls = self.inner.tls.clone().ok_or_else(|| {
                format!(
                    "the node `{}` serves its API over TLS: set cluster.tls so this node can \
                     verify it",
                    node.name
                )
            })?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("cluster.tls: {e}"))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(node.address.clone(), channel.clone());
        Ok(channel)
    }

    /// `message` as a call on a caller's behalf: with the cookie and no deadline of its own (it
    /// may take as long as the work takes: a spawn, a stop, an activation; it ends when the
    /// caller's call does). The connection is still bounded by the timeout.
    pub fn forward<T>(&self, message: T) -> tonic::Request<T> {
        self.stream_request(message)
    }

    /// `message` as a call to another node: with the cookie and the deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.stream_request(message);
        request.set_timeout(self.inner.timeout);
        request
    }

    /// `message` as the start of a stream from another node: with the cookie and no deadline
    /// (a deadline would end the stream; bound its start with [`Peers::timeout`]).
    pub fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.inner.cookie).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}
