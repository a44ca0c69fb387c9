//! How the node is watched from outside: `/metrics` for Prometheus on its own HTTP listener
//! (`telemetry.metrics_listen`).
//!
//! Its own port rather than the API's: a scraper needs no API token or client certificate,
//! the listener can stay on a private address, and the API stays gRPC only.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The content type of the OpenMetrics text format, which Prometheus asks for first.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running HTTP listener of the node (metrics or the console): stopped when dropped.
pub struct HttpListener {
    /// The address it is bound to.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for HttpListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpListener {
    /// Binds `listen` and serves `app` on it until dropped.
    pub async fn serve(listen: &str, app: Router) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(%addr, error = %e, "HTTP listener failed");
            }
        });
        Ok(Self { addr, task })
    }
}

/// `GET /metrics`: every metric of the process (`cadre_actors::metrics`).
pub fn metrics_app() -> Router {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        cadre_actors::metrics::metrics().encode(),
    )
}
