//! An append in a sampled OpenTelemetry span (feature `otel`): the store writes the span's W3C
//! trace context (`traceparent`) with the event; raw async-nats publishes the same headers,
//! the same `traceparent` included, from the same span. The spans are recorded by an
//! OpenTelemetry pipeline with no exporter, set for this case only.

use std::cell::Cell;

use async_nats::HeaderMap;
use cim_nats::{headers as h, AggregateId, ExpectedVersion};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::instrument::WithSubscriber as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::harness::{latency, Row};
use crate::write::{raw_append_with, sample_event, store};

/// The current span's `traceparent`, as the store writes it.
fn traceparent() -> String {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// One event at a time on one aggregate, each append in a sampled span of its own.
pub(crate) async fn append_traced(client: &async_nats::Client, reps: usize, rows: &mut Vec<Row>) {
    let provider = SdkTracerProvider::builder().build();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))),
    );
    let store = store(client, "traced").await;
    let js = async_nats::jetstream::new(client.clone());
    let id = AggregateId::new("f").expect("id");
    let f_version = Cell::new(0u64);
    let (r_version, r_last) = (Cell::new(0u64), Cell::new(0u64));
    let (f, r) = latency(
        50,
        reps,
        |_| {
            let (store, id, v) = (&store, &id, &f_version);
            async move {
                let result = store
                    .append(
                        id,
                        ExpectedVersion::from_loaded(v.get()),
                        vec![sample_event("traced.book.recorded")],
                    )
                    .await
                    .expect("append");
                v.set(result.version);
            }
            .instrument(tracing::dispatcher::with_default(&dispatch, || {
                tracing::info_span!("command")
            }))
            .with_subscriber(dispatch.clone())
        },
        |_| {
            let (js, v, last) = (&js, &r_version, &r_last);
            async move {
                let mut headers = HeaderMap::new();
                headers.insert(h::TRACEPARENT, traceparent().as_str());
                let seq = raw_append_with(
                    js,
                    "traced",
                    "r",
                    v.get() + 1,
                    last.get(),
                    crate::payload(),
                    headers,
                )
                .await;
                v.set(v.get() + 1);
                last.set(seq);
            }
            .instrument(tracing::dispatcher::with_default(&dispatch, || {
                tracing::info_span!("command")
            }))
            .with_subscriber(dispatch.clone())
        },
    )
    .await;
    // Every framework append carried the trace.
    let stream = js.get_stream("TRACED_EVENTS").await.expect("stream");
    let first = stream.get_raw_message(1).await.expect("message");
    assert!(
        first.headers.get(h::TRACEPARENT).is_some(),
        "the store wrote no traceparent"
    );
    let case = "append one event in a sampled OpenTelemetry span (traceparent on both sides)";
    rows.push(Row::latency(
        case,
        "p50 µs",
        f.percentile(0.5),
        r.percentile(0.5),
    ));
    rows.push(Row::latency(
        case,
        "p99 µs",
        f.percentile(0.99),
        r.percentile(0.99),
    ));
    let _ = provider.shutdown();
}
