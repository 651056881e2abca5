//! One trace across a command, its event and the event's handler, exported by OpenTelemetry's
//! stdout exporter (feature `otel` of this crate):
//!
//! ```text
//! cargo run -p cim-nats-examples --features otel --example traces
//! ```
//!
//! A command runs in a span; the event it stores carries the span's W3C trace context
//! (`traceparent`); a durable subscriber's `handle_event` span is a child of that trace, even
//! though it runs on another task (it could be another process). The spans are printed by the
//! exporter when the program ends; the trace ids printed first let you find them.
//! With `NATS_URL` set it uses that server, else it starts one of its own.

use std::sync::Arc;
use std::time::Duration;

use cim_infrastructure_nats::domain::{
    ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureCommand,
    InfrastructureId, MessageIdentity, ResourceCapabilities, ResourceId, SystemArchitecture,
};
use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::NatsServer;
use cim_nats::{AsyncFnHandler, Delivery, Repository};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::sync::mpsc;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn trace_id() -> String {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Spans go to OpenTelemetry, which prints them on standard output.
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("cim-nats-example"))),
    )?;

    let (_server, url) = match std::env::var("NATS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = NatsServer::start()?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = async_nats::connect(url).await?;
    let store =
        JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("infrastructure")).await?;

    // The handler: reports the trace it runs in.
    let (tx, mut handled) = mpsc::unbounded_channel();
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("infrastructure.compute.>")
        .durable("traces-example")
        .handler(AsyncFnHandler::with_delivery(move |d: Delivery| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((d.event.event_type.clone(), trace_id()));
                Ok(())
            }
        }))
        .build()?
        .subscribe()
        .await?;

    // The command, in a span of its own.
    let repo = Arc::new(Repository::<InfrastructureAggregate>::new(store));
    let infra = InfrastructureId::new();
    let span = tracing::info_span!("register machine", hostname = "web-01");
    let command_trace = span.in_scope(trace_id);
    repo.execute(
        &infra.into(),
        InfrastructureCommand::RegisterComputeResource {
            infrastructure_id: infra,
            spec: ComputeResourceSpec {
                id: ResourceId::new(),
                resource_type: ComputeType::VirtualMachine,
                hostname: Hostname::new("web-01")?,
                system: SystemArchitecture::new("x86_64-linux")?,
                capabilities: ResourceCapabilities::default(),
            },
            identity: MessageIdentity::new_from_user("ops"),
        },
    )
    .instrument(span)
    .await?;
    println!("the command ran in trace {command_trace}");

    let (event_type, handler_trace) = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await?
        .ok_or("the subscriber ended")?;
    println!("{event_type} was handled in trace {handler_trace}");
    handle.shutdown().await?;
    if handler_trace != command_trace {
        return Err("the handler ran in another trace".into());
    }
    println!("one trace: the exported spans follow\n");
    provider.shutdown()?;
    Ok(())
}
