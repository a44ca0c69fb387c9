//! The API over TLS: a rustls acceptor whose certificate, key and client CA are read again
//! when their files change (looked at as connections arrive) or when asked (SIGHUP), so that a
//! rotated certificate is served to new connections without a restart.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use cadre_actors::config::ApiTls;
use cadre_actors::tls::{TlsError, provider, read_certs, read_key};
use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// The API's TLS configuration, kept current with its files.
pub struct ReloadingTls {
    files: ApiTls,
    current: Mutex<Loaded>,
    /// Set by [`ReloadingTls::reload`]: read the files at the next connection.
    asked: AtomicBool,
}

struct Loaded {
    config: Arc<ServerConfig>,
    /// The files' (modified time, length) when read.
    stamps: Vec<Option<(SystemTime, u64)>>,
}

/// Handshakes a slow or silent client may take before it is dropped.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

impl ReloadingTls {
    /// Reads the files once; an error here stops the node.
    pub fn load(files: ApiTls) -> Result<Self, TlsError> {
        let loaded = read(&files)?;
        Ok(Self {
            files,
            current: Mutex::new(loaded),
            asked: AtomicBool::new(false),
        })
    }

    /// Reads the files again at the next connection, changed or not (SIGHUP).
    pub fn reload(&self) {
        self.asked.store(true, Ordering::Relaxed);
    }

    /// The configuration for a new connection: read again if a file changed or a reload was
    /// asked. A file that cannot be read leaves the last good configuration in use (logged).
    fn config(&self) -> Arc<ServerConfig> {
        let mut current = self.current.lock().expect("tls lock");
        let asked = self.asked.swap(false, Ordering::Relaxed);
        if asked || stamps(&self.files) != current.stamps {
            match read(&self.files) {
                Ok(loaded) => {
                    tracing::info!(cert = %self.files.cert_file.display(), "API certificate read again");
                    *current = loaded;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the API's TLS files; serving the last good ones")
                }
            }
        }
        current.config.clone()
    }
}

/// TLS connections accepted on `listener`; handshakes run apart, so a slow one holds up no
/// other, and one that fails (a plaintext client, an unknown client certificate) is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (conn, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let _ = conn.set_nodelay(true);
            let (accepted, acceptor) = (tx.clone(), TlsAcceptor::from(tls.config()));
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

fn stamps(files: &ApiTls) -> Vec<Option<(SystemTime, u64)>> {
    let stamp = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    [
        Some(&files.cert_file),
        Some(&files.key_file),
        files.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| stamp(p))
    .collect()
}

fn read(files: &ApiTls) -> Result<Loaded, TlsError> {
    let stamps = stamps(files);
    let certs = read_certs(&files.cert_file)?;
    let key = read_key(&files.key_file)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::File {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        stamps,
    })
}
