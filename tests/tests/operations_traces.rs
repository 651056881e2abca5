//! W3C trace context across processes (feature `otel`): an append made in a sampled
//! OpenTelemetry span stores `traceparent` with the event; a subscriber's handling span is a
//! child of that trace; an append with no span stores no trace header; commands decided
//! together by a repository's command lane each carry their own caller's trace; a read model
//! applies a traced event in a span of its trace; a subscriber in another process
//! (`trace-subscriber`) handles a command's event in the command's trace.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
use cim_nats::jetstream::{JetStreamEventStore, ReadModelOptions, ReadModelRunner, StoreConfig};
use cim_nats::{headers, AggregateId, Delivery, Repository};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use support::balances::Balances;
use support::bank::{Account, AccountCommand};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The trace id of the current span.
fn current_trace() -> TraceId {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
}

/// The trace id in a stored event's `traceparent`, if any.
async fn stored_trace(client: &async_nats::Client, sequence: u64) -> Option<String> {
    let stream = async_nats::jetstream::new(client.clone())
        .get_stream("BANK_EVENTS")
        .await
        .expect("stream");
    let message = stream.get_raw_message(sequence).await.expect("message");
    message
        .headers
        .get(headers::TRACEPARENT)
        .map(|v| v.as_str().split('-').nth(1).unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_goes_from_the_appending_span_to_the_handlers_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("operations_traces")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let (server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .expect("store");
    let repo = Arc::new(Repository::<Account>::new(store.clone()));

    // A command in a span of its own: its event carries the span's trace.
    let acc1 = AggregateId::new("acc-1").expect("id");
    let span = tracing::info_span!("open account");
    let command_trace = span.in_scope(current_trace);
    let opened = repo
        .execute(
            &acc1,
            AccountCommand::Open {
                owner: "ada".into(),
            },
        )
        .instrument(span)
        .await
        .expect("open")
        .last_sequence();
    assert_eq!(
        stored_trace(&client, opened.0).await,
        Some(command_trace.to_string())
    );

    // No span: no trace header.
    let acc2 = AggregateId::new("acc-2").expect("id");
    let untraced = repo
        .execute(
            &acc2,
            AccountCommand::Open {
                owner: "bob".into(),
            },
        )
        .await
        .expect("open")
        .last_sequence();
    assert_eq!(stored_trace(&client, untraced.0).await, None);

    // 16 callers on one aggregate, each in its own span: the lane decides them together, and
    // each event carries its own caller's trace.
    let mut callers = Vec::new();
    for i in 0..16u64 {
        let repo = Arc::clone(&repo);
        let acc1 = acc1.clone();
        let span = tracing::info_span!("deposit", i);
        let trace = span.in_scope(current_trace);
        callers.push(tokio::spawn(
            async move {
                let sequence = repo
                    .execute(&acc1, AccountCommand::Deposit(i + 1))
                    .await
                    .expect("deposit")
                    .last_sequence();
                (sequence, trace)
            }
            .instrument(span),
        ));
    }
    let mut expected: HashMap<u64, TraceId> = HashMap::new();
    for caller in callers {
        let (sequence, trace) = caller.await.expect("caller");
        expected.insert(sequence.0, trace);
    }
    for (sequence, trace) in &expected {
        assert_eq!(
            stored_trace(&client, *sequence).await,
            Some(trace.to_string()),
            "the event at {sequence}"
        );
    }

    // A subscriber: each handling runs in a span of the event's trace.
    let seen: Arc<Mutex<HashMap<u64, TraceId>>> = Arc::default();
    let record = Arc::clone(&seen);
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.>")
        .durable("traced")
        .handler(cim_nats::AsyncFnHandler::with_delivery(
            move |d: Delivery| {
                let record = Arc::clone(&record);
                async move {
                    record
                        .lock()
                        .unwrap()
                        .insert(d.event.stream_sequence.0, current_trace());
                    Ok(())
                }
            },
        ))
        .build()
        .expect("subscriber")
        .subscribe()
        .await
        .expect("subscribe");
    let total = 18;
    support::wait_until(Duration::from_secs(20), "every event handled", || {
        let n = seen.lock().unwrap().len();
        async move { n == total }
    })
    .await;
    handle.shutdown().await.expect("shutdown");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[&opened.0], command_trace,
        "the handler is in the command's trace"
    );
    for (sequence, trace) in &expected {
        assert_eq!(seen[sequence], *trace, "the handling of {sequence}");
    }
    assert_ne!(
        seen[&untraced.0], command_trace,
        "an event with no trace starts a trace of its own"
    );

    // A read model: applying a traced event is a span in its trace too.
    let last = cim_nats::EventStore::last_sequence(&store)
        .await
        .expect("last");
    let model = ReadModelRunner::start(&store, Balances, ReadModelOptions::default())
        .await
        .expect("model");
    model
        .wait_for(last, Duration::from_secs(10))
        .await
        .expect("caught up");
    model.shutdown().await.expect("shutdown");

    // The exported spans: each `handle_event` of a traced event is a child in that trace.
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let handled: Vec<_> = spans.iter().filter(|s| s.name == "handle_event").collect();
    assert_eq!(handled.len(), total);
    assert!(handled
        .iter()
        .any(|s| s.span_context.trace_id() == command_trace && s.parent_span_is_remote));
    let applied: Vec<_> = spans.iter().filter(|s| s.name == "apply_event").collect();
    assert_eq!(
        applied.len(),
        17,
        "one span per traced event, none for the untraced one"
    );
    assert!(applied
        .iter()
        .any(|s| s.span_context.trace_id() == command_trace));

    // Another process: a subscriber in a process of its own handles a command's event in the
    // command's trace, its exported span a child of the appending span.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trace-subscriber"))
        .arg(server.url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("trace-subscriber");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    assert_eq!(next(&mut lines).await, "ready");
    let span = tracing::info_span!("deposit from afar");
    let remote_trace = span.in_scope(current_trace);
    let deposited = repo
        .execute(&acc1, AccountCommand::Deposit(7))
        .instrument(span)
        .await
        .expect("deposit")
        .last_sequence();
    assert_eq!(
        next(&mut lines).await,
        format!("handled {} {remote_trace}", deposited.0),
        "the other process's handler runs in the command's trace"
    );
    use std::io::Write as _;
    writeln!(child.stdin.as_mut().expect("stdin"), "stop").expect("stop");
    let mut exported = Vec::new();
    loop {
        let line = next(&mut lines).await;
        if line == "done" {
            break;
        }
        exported.push(line);
    }
    assert!(child.wait().expect("exit").success());
    assert_eq!(exported.len(), 1, "{exported:?}");
    let parts: Vec<&str> = exported[0].split(' ').collect();
    assert_eq!(parts[1], remote_trace.to_string());
    assert_eq!(parts[3], "true", "its parent is the appending span, remote");
}

/// The next line of the other process, within 20 s.
async fn next(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.recv())
        .await
        .expect("a line in time")
        .expect("the process runs")
}
