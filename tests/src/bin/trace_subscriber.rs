//! The subscriber process of the cross-process trace test (`tests/tests/operations_traces.rs`):
//! a durable subscriber of the `bank` domain in a process of its own, with OpenTelemetry spans
//! kept in memory.
//!
//! `trace-subscriber URL`: prints `ready` once subscribed, then for each handled event
//! `handled {event stream sequence} {trace id of the handler's span}`; on a line `stop` on its
//! standard input it stops, and prints every exported `handle_event` span as
//! `span {trace id} {parent span id} {remote parent: true|false}`, then `done`.

use std::io::{BufRead, Write};

use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::{AsyncFnHandler, Delivery};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let url = std::env::args()
        .nth(1)
        .ok_or("usage: trace-subscriber URL")?;
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("trace-subscriber"))),
    )?;
    let client = async_nats::connect(&url).await?;
    let handle = EventSubscriberBuilder::new()
        .client(client)
        .subject("bank.>")
        .durable("trace-audit")
        .deliver_policy(DeliverPolicy::New)
        .handler(AsyncFnHandler::with_delivery(|d: Delivery| async move {
            let trace = tracing::Span::current()
                .context()
                .span()
                .span_context()
                .trace_id();
            say(&format!("handled {} {trace}", d.event.stream_sequence.0));
            Ok(())
        }))
        .build()?
        .subscribe()
        .await?;
    say("ready");
    let stop = tokio::task::spawn_blocking(|| {
        for line in std::io::stdin().lock().lines() {
            if line.map_or(true, |l| l.trim() == "stop") {
                return;
            }
        }
    });
    stop.await?;
    handle.shutdown().await?;
    provider.force_flush()?;
    for span in exporter.get_finished_spans()? {
        if span.name == "handle_event" {
            say(&format!(
                "span {} {} {}",
                span.span_context.trace_id(),
                span.parent_span_id,
                span.parent_span_is_remote
            ));
        }
    }
    say("done");
    Ok(())
}
