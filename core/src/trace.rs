//! W3C trace context (`traceparent`, `tracestate`) carried in an event's headers from the span
//! that appended it to the spans of every subscriber handling it, so that one trace shows a
//! command, its events and their consumers across processes.
//!
//! With the feature `otel`, an append made while a **sampled** OpenTelemetry span is current
//! (a `tracing` span exported through `tracing-opentelemetry`) writes its context as
//! `traceparent` (and `tracestate` when not empty); a subscriber's `handle_event` span takes
//! the stored context as its parent. Without the feature, or without a sampled span, nothing is
//! written: the headers cost nothing when tracing is off. A command decided by a repository's
//! command lane carries the context of the caller that sent it, even when another caller's task
//! appends it.

use std::collections::HashMap;
#[cfg(feature = "otel")]
use std::sync::Arc;

use crate::event::EventId;

/// The trace context of one event, as its headers carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceContext {
    /// `00-{trace id}-{span id}-{flags}`.
    pub(crate) traceparent: String,
    /// Vendor state, if any.
    pub(crate) tracestate: Option<String>,
}

#[cfg(feature = "otel")]
tokio::task_local! {
    /// The contexts of the events an append sends, by event id, when they are not the current
    /// span's (a command lane appends the commands of several callers).
    static EVENTS: Arc<HashMap<EventId, TraceContext>>;
}

/// The context of the current span, if it is a valid, sampled OpenTelemetry span.
#[cfg(feature = "otel")]
pub(crate) fn current() -> Option<TraceContext> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() || !sc.is_sampled() {
        return None;
    }
    let state = sc.trace_state().header();
    Some(TraceContext {
        traceparent: format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ),
        tracestate: (!state.is_empty()).then_some(state),
    })
}

/// Without the feature `otel`: no context.
#[cfg(not(feature = "otel"))]
pub(crate) fn current() -> Option<TraceContext> {
    None
}

#[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
/// The context to write on event `id`: the one given for it by [`scope`], else the current
/// span's.
pub(crate) fn for_event(id: &EventId) -> Option<TraceContext> {
    #[cfg(feature = "otel")]
    {
        EVENTS
            .try_with(|events| events.get(id).cloned())
            .ok()
            .flatten()
            .or_else(current)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = id;
        None
    }
}

/// Runs `append` with the contexts of its events given by id.
pub(crate) async fn scope<F: std::future::Future>(
    events: HashMap<EventId, TraceContext>,
    append: F,
) -> F::Output {
    #[cfg(feature = "otel")]
    if !events.is_empty() {
        return EVENTS.scope(Arc::new(events), append).await;
    }
    #[cfg(not(feature = "otel"))]
    drop(events);
    append.await
}

/// Makes `span` a child of the context in `traceparent` / `tracestate`, if they parse.
#[cfg(feature = "otel")]
#[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
pub(crate) fn set_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let Some(parent) = traceparent else {
        return;
    };
    let parts: Vec<&str> = parent.trim().split('-').collect();
    let [version, trace, span_id, flags] = parts.as_slice() else {
        return;
    };
    if version.len() != 2 || *version == "ff" {
        return;
    }
    let (Ok(trace), Ok(span_id), Ok(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(span_id),
        u8::from_str_radix(flags, 16),
    ) else {
        return;
    };
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let context = SpanContext::new(trace, span_id, TraceFlags::new(flags), true, state);
    if !context.is_valid() {
        return;
    }
    let cx = opentelemetry::Context::new().with_remote_span_context(context);
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = %e, "the event's trace context was not taken as the span's parent");
    }
}

/// Without the feature `otel`: nothing to do.
#[cfg(not(feature = "otel"))]
#[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
pub(crate) fn set_parent(
    _span: &tracing::Span,
    _traceparent: Option<&str>,
    _tracestate: Option<&str>,
) {
}

/// A span for applying one event to a projection, a child of the event's trace: only for an
/// event that carries one (feature `otel`), so an untraced stream costs no span per event.
#[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
pub(crate) fn projection_span(
    projection: &str,
    sequence: u64,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Option<tracing::Span> {
    if !cfg!(feature = "otel") {
        return None;
    }
    traceparent?;
    let span = tracing::info_span!("apply_event", projection, stream_sequence = sequence);
    set_parent(&span, traceparent, tracestate);
    Some(span)
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use super::*;

    #[test]
    fn no_context_without_a_sampled_span() {
        assert_eq!(current(), None);
        assert_eq!(for_event(&EventId::new()), None);
    }
}
