//! The process's logs and, when asked, its exec traces over OTLP.

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;

use crate::Failure;

/// Logs to stderr (`$CADRE_LOG`, else `default_logs`), and the exec traces
/// (`cadre_actors::traces`) over OTLP/gRPC to `otlp_endpoint` if given. The provider returned
/// flushes the last spans when shut down.
pub fn init(
    otlp_endpoint: Option<String>,
    default_logs: &str,
) -> Result<Option<SdkTracerProvider>, Failure> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    // ractor opens a span per actor at INFO; that is noise (and cost) at the default level.
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(
            EnvFilter::try_from_env("CADRE_LOG").unwrap_or_else(|_| EnvFilter::new(default_logs)),
        );
    let endpoint = otlp_endpoint.filter(|e| !e.is_empty());
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(None);
    };
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| Failure::Usage(format!("the OTLP endpoint `{endpoint}`: {e}")))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("cadre")
                .build(),
        )
        .build();
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("cadre"))
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(cadre_actors::traces::TARGET, tracing::Level::INFO),
        );
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    cadre_actors::traces::enable();
    tracing::info!(%endpoint, "sending traces over OTLP");
    Ok(Some(provider))
}
