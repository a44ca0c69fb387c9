//! Connecting to a node, with errors a person can act on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use cadre_actors::config::DEFAULT_MAX_MESSAGE_BYTES;
use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::Failure;

/// Where the node is.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Node address.
    #[arg(
        long,
        env = "CADRE_SERVER",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    pub server: String,
    /// Bearer token, for nodes started with api.tokens or --token-file.
    #[arg(long, env = "CADRE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Seconds to wait for the node to answer when connecting (streams then run as long as
    /// they last).
    #[arg(
        long,
        env = "CADRE_TIMEOUT",
        default_value = "5",
        value_name = "SECONDS",
        value_parser = parse_timeout,
        global = true
    )]
    pub timeout: Duration,
    /// The largest gRPC message this client sends or takes, in bytes (the node's limit is
    /// api.max_message_bytes; raise both together).
    #[arg(
        long,
        env = "CADRE_MAX_MESSAGE_BYTES",
        default_value_t = DEFAULT_MAX_MESSAGE_BYTES,
        value_name = "BYTES",
        global = true
    )]
    pub max_message_bytes: usize,
    /// CA certificates (PEM) the node's certificate must chain to, for an https:// --server
    /// (besides the system's roots).
    #[arg(long, env = "CADRE_CA_FILE", value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// This client's certificate (PEM), for a node that asks for one (mutual TLS); with --key.
    #[arg(long, env = "CADRE_CERT", value_name = "FILE", global = true)]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, env = "CADRE_KEY", value_name = "FILE", global = true)]
    pub key: Option<PathBuf>,
    /// Send --token to a non-loopback address over plaintext anyway (anyone on the way can
    /// read it).
    #[arg(long, global = true)]
    pub insecure: bool,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("`{s}` is not a number of seconds > 0")),
    }
}

/// Adds `authorization: Bearer <token>` to every call, when a token is given.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A connection to a node's API.
pub type Api = InterceptedService<Channel, Bearer>;

/// Connects to the node and checks, within `--timeout`, that it answers as a cadre node (its
/// health service). A malformed `--server` or `--token` is a usage error.
pub async fn connect(args: &ServerArgs) -> Result<Api, Failure> {
    let bearer = match &args.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| Failure::Usage("cadre: --token: not a valid header value".into()))?,
        ),
        None => None,
    };
    let url = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .ok()
        .filter(|e| e.uri().host().is_some())
        .ok_or_else(|| {
            Failure::Usage(format!(
                "cadre: --server: `{}` is not an address (expected HOST:PORT or \
                 http://HOST:PORT)",
                args.server
            ))
        })?
        .connect_timeout(args.timeout);
    let https = url.starts_with("https://");
    let endpoint = if https {
        endpoint
            .tls_config(client_tls(args)?)
            .map_err(|e| Failure::Usage(format!("cadre: --server: {e}")))?
    } else {
        if args.cert.is_some() || args.ca_file.is_some() {
            return Err(Failure::Usage(format!(
                "cadre: --ca-file and --cert are for an https:// --server, not {url}"
            )));
        }
        let host = endpoint.uri().host().unwrap_or_default().to_string();
        if args.token.is_some() && !is_loopback(&host) && !args.insecure {
            return Err(Failure::Usage(format!(
                "cadre: --token: refusing to send it in plaintext to {host} (anyone on the way \
                 could read it); use https://, or --insecure to send it anyway"
            )));
        }
        endpoint
    };
    let connecting = connect_channel(&url, endpoint, args.ca_file.as_deref(), args.cert.is_some());
    let channel = tokio::time::timeout(args.timeout, connecting)
        .await
        .map_err(|_| {
            anyhow!(
                "no answer from {url} within {:.1} s: is a cadre node listening there? (raise \
                 --timeout for a slow link)",
                args.timeout.as_secs_f64()
            )
        })??;
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}

/// The TLS of an https:// connection: the system's roots and --ca-file, and --cert/--key.
fn client_tls(args: &ServerArgs) -> Result<ClientTlsConfig, Failure> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            Failure::Usage(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format!("cadre: {flag}: {}: not found", path.display())
                }
                _ => format!("cadre: {flag}: {}: {e}", path.display()),
            })
        })
    };
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &args.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read("--ca-file", ca)?));
    }
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("--cert", cert)?,
                read("--key", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(Failure::Usage(
                "cadre: --cert and --key go together (a certificate and its key)".into(),
            ));
        }
    }
    Ok(tls)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What a failed TLS connection means, if `e` holds a TLS error: said so a person can act.
fn tls_failure(url: &str, e: &(dyn std::error::Error + 'static)) -> Option<anyhow::Error> {
    if let Some(problem) = cadre_actors::tls::certificate_problem(e) {
        return Some(anyhow!(
            "{url}: the node's TLS certificate was refused: {problem} (give the node's CA with \
             --ca-file, or reach it by a name its certificate holds)"
        ));
    }
    let mut next = Some(e);
    while let Some(cause) = next {
        let tls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        match tls {
            Some(rustls::Error::InvalidMessage(_)) => {
                return Some(anyhow!(
                    "{url} does not speak TLS: the node serves plaintext there; use http://"
                ));
            }
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::HandshakeFailure
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA,
            )) => {
                return Some(anyhow!(
                    "{url} refused this client: the node asks for a client certificate from its \
                     CA (give --cert and --key)"
                ));
            }
            Some(other) => return Some(anyhow!("{url}: TLS: {other}")),
            None => next = cause.source(),
        }
    }
    None
}

/// Whether the server at `url` answers plaintext HTTP/2 as a TLS server does: with a TLS
/// record (an alert) rather than HTTP/2.
async fn speaks_tls(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(addr) = url.split("://").nth(1).map(|a| a.trim_end_matches('/')) else {
        return false;
    };
    let probe = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut first = [0u8; 1];
        conn.read_exact(&mut first).await.ok()?;
        Some(first[0] == 0x15 || first[0] == 0x16)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// Whether the TLS server at `url` refuses a client without a certificate (TLS 1.3 says so
/// only after the handshake, as an alert on the first read).
async fn asks_for_client_certificate(url: &str, ca_file: Option<&Path>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return false;
    };
    let Ok(config) = cadre_actors::tls::client_config(ca_file) else {
        return false;
    };
    let Ok(name) =
        rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
    else {
        return false;
    };
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .ok()?;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let mut tls = connector.connect(name, tcp).await.ok()?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut byte = [0u8; 1];
        let read = tls.read(&mut byte).await;
        Some(
            matches!(read, Err(e) if e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
            == Some(&rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired))),
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

async fn connect_channel(
    url: &str,
    endpoint: Endpoint,
    ca_file: Option<&Path>,
    client_certificate: bool,
) -> anyhow::Result<Channel> {
    let https = url.starts_with("https://");
    let connected = endpoint.connect().await;
    if let Err(e) = &connected
        && let Some(failure) = tls_failure(url, e)
    {
        return Err(failure);
    }
    if connected.is_err() && !https && speaks_tls(url).await {
        return Err(plaintext_to_tls(url));
    }
    let channel = connected.map_err(|e| {
        let mut cause: Option<&dyn std::error::Error> = Some(&e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                return anyhow!(
                    "no cadre node at {url}: {}; start one with `cadre serve`",
                    io.to_string().to_lowercase()
                );
            }
            cause = c.source();
        }
        anyhow!("no cadre node at {url}: {e}; start one with `cadre serve`")
    })?;
    // Every node serves gRPC health without a token: an answer means a cadre node is there.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    if let Err(status) = &health {
        if let Some(failure) = tls_failure(url, status) {
            return Err(failure);
        }
        if !https && speaks_tls(url).await {
            return Err(plaintext_to_tls(url));
        }
        if https && !client_certificate && asks_for_client_certificate(url, ca_file).await {
            return Err(anyhow!(
                "{url} refused this client: the node asks for a client certificate from its CA \
                 (give --cert and --key)"
            ));
        }
    }
    match health {
        Ok(_) => Ok(channel),
        Err(status) if status.code() == tonic::Code::Unimplemented => Err(anyhow!(
            "{url} answers gRPC but is not a cadre node (it has no health service)"
        )),
        Err(status) => Err(anyhow!(
            "{url} does not speak cadre's API (gRPC over HTTP/2): {}",
            status.message()
        )),
    }
}

fn plaintext_to_tls(url: &str) -> anyhow::Error {
    let tls = url.replacen("http://", "https://", 1);
    anyhow!("{url}: the node serves TLS there; use {tls} (with --ca-file for its CA)")
}
