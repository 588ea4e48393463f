//! Logs and traces of the agent (its metrics are on `/metrics`: [`crate::metrics`]).
//!
//! [`Telemetry::subscriber`] builds one `tracing` subscriber: logs to stderr as text or JSON
//! (`agent.log_format`), filtered by `RUST_LOG` (default `info`); and, when
//! `agent.otlp_endpoint` is set, spans exported as OpenTelemetry traces (tracing-opentelemetry)
//! over OTLP/HTTP (protobuf) to `<endpoint>/v1/traces`. [`Telemetry::shutdown`] flushes the
//! exporter (on the agent's exit).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, Registry, layer::SubscriberExt};

use crate::config::LogFormat;

/// The OpenTelemetry service name of the agent.
pub const SERVICE_NAME: &str = "tollgate-agent";

/// An exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {message}")]
pub struct TelemetryError {
    /// The configured endpoint.
    pub endpoint: String,
    /// What failed.
    pub message: String,
}

/// The exporter behind the subscriber, to flush on exit.
#[derive(Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// The subscriber for `format` and, when not empty, the OTLP `endpoint`
    /// (`http://host:4318`).
    pub fn subscriber(
        format: LogFormat,
        endpoint: &str,
    ) -> Result<(Self, impl tracing::Subscriber + Send + Sync), TelemetryError> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let logs = match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .boxed(),
        };
        let mut telemetry = Self::default();
        let mut layers = vec![logs];
        if !endpoint.is_empty() {
            let base = endpoint.trim_end_matches('/');
            let error = |e: &dyn std::fmt::Display| TelemetryError {
                endpoint: endpoint.to_owned(),
                message: e.to_string(),
            };
            let resource = Resource::builder().with_service_name(SERVICE_NAME).build();
            let spans = SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/traces"))
                .build()
                .map_err(|e| error(&e))?;
            let traces = SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                .with_resource(resource)
                .build();
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(traces.tracer(SERVICE_NAME))
                    .boxed(),
            );
            telemetry.traces = Some(traces);
        }
        let subscriber = Registry::default().with(layers).with(filter);
        Ok((telemetry, subscriber))
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(self) {
        if let Some(traces) = self.traces
            && let Err(error) = traces.shutdown()
        {
            eprintln!("flushing traces: {error}");
        }
    }
}
