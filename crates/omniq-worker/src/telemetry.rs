//! What a pool tells observability tools: the span each attempt runs in (with
//! the OpenTelemetry messaging attributes), the W3C trace context carried
//! from enqueue to execution (feature `otel`), and counters and histograms
//! through the `metrics` facade (feature `metrics`).
//!
//! The trace context travels in the task's `meta` map as `traceparent` and
//! `tracestate`, written here in the W3C format whatever propagator the
//! program installed: with none installed, OpenTelemetry's global propagator
//! does nothing, and the link would be silently lost. The execution span is
//! not a child of the enqueueing span but linked to it, as the OpenTelemetry
//! messaging conventions say: a task may run hours after it was enqueued,
//! and a parent that lasts that long makes traces unreadable.

use std::collections::BTreeMap;
use std::time::Duration;

use omniq_core::Task;
use time::OffsetDateTime;

/// The meta entry holding the W3C `traceparent` of the enqueueing span.
pub const TRACEPARENT: &str = "traceparent";

/// The meta entry holding the W3C `tracestate` of the enqueueing span.
pub const TRACESTATE: &str = "tracestate";

/// The span one attempt runs in: a root span (an attempt is its own unit of
/// work, whatever span the pool was started in), named `task` for logs and
/// `process {queue}` for OpenTelemetry, with the messaging attributes, and,
/// with feature `otel`, linked to the span that enqueued the task.
pub fn execution_span(task: &Task, worker_id: &str) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "task",
        id = %task.id,
        func_path = %task.func_path,
        queue = %task.queue,
        attempt = task.attempts,
        worker_id = %worker_id,
        otel.name = tracing::field::Empty,
        otel.kind = "consumer",
        messaging.system = "omniq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %task.queue,
        messaging.message.id = %task.id,
        messaging.consumer.group.name = %worker_id,
    );
    // Named only when some subscriber wants the span: the name is built per
    // attempt.
    if !span.is_disabled() {
        span.record("otel.name", format!("process {}", task.queue).as_str());
    }
    #[cfg(feature = "otel")]
    if let Some(link) = otel::linked(&task.meta) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.add_link(link);
    }
    span
}

/// Writes the trace context of the current span into `meta`, for the
/// execution span to link to. Does nothing without feature `otel`, outside
/// any span, or when `meta` already carries a `traceparent` (set by the
/// program, or by the task this one repeats).
pub fn inject_current(meta: &mut BTreeMap<String, String>) {
    #[cfg(feature = "otel")]
    otel::inject(meta);
    #[cfg(not(feature = "otel"))]
    let _ = meta;
}

#[cfg(feature = "otel")]
mod otel {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{TRACEPARENT, TRACESTATE};

    /// The span context of the current `tracing` span (through the
    /// `tracing-opentelemetry` layer), else of OpenTelemetry's current
    /// context, if either is valid.
    fn current() -> Option<SpanContext> {
        let from_tracing = tracing::Span::current().context().span().span_context().clone();
        if from_tracing.is_valid() {
            return Some(from_tracing);
        }
        let from_otel = opentelemetry::Context::current().span().span_context().clone();
        from_otel.is_valid().then_some(from_otel)
    }

    pub(super) fn inject(meta: &mut BTreeMap<String, String>) {
        if meta.contains_key(TRACEPARENT) {
            return;
        }
        let Some(context) = current() else { return };
        meta.insert(
            TRACEPARENT.to_string(),
            format!(
                "00-{}-{}-{:02x}",
                context.trace_id(),
                context.span_id(),
                context.trace_flags().to_u8()
            ),
        );
        let state = context.trace_state().header();
        if !state.is_empty() {
            meta.insert(TRACESTATE.to_string(), state);
        }
    }

    /// The span context a task's meta names, if its `traceparent` is one
    /// (version 00 or a later one read as 00, as the W3C format says).
    pub(super) fn linked(meta: &BTreeMap<String, String>) -> Option<SpanContext> {
        let parent = meta.get(TRACEPARENT)?;
        let mut parts = parent.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let state = meta
            .get(TRACESTATE)
            .and_then(|state| TraceState::from_str(state).ok())
            .unwrap_or_default();
        let context = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
        context.is_valid().then_some(context)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn traceparents_are_read_as_the_w3c_format_says() {
            let meta = |value: &str| BTreeMap::from([(TRACEPARENT.to_string(), value.to_string())]);
            let good = linked(&meta("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).unwrap();
            assert_eq!(good.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(good.is_sampled() && good.is_remote());
            for bad in [
                "",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "00-xyz-00f067aa0ba902b7-01",
            ] {
                assert!(linked(&meta(bad)).is_none(), "{bad:?}");
            }
        }
    }
}

/// Counts an attempt that starts now, and how long its task waited since it
/// was due.
pub(crate) fn started(task: &Task, now: OffsetDateTime) {
    #[cfg(feature = "metrics")]
    {
        let labels = [("queue", task.queue.clone()), ("handler", task.func_path.clone())];
        metrics::counter!("omniq_tasks_started_total", &labels).increment(1);
        let waited = (now - task.eta).as_seconds_f64().max(0.0);
        metrics::histogram!("omniq_task_queue_wait_seconds", &labels).record(waited);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (task, now);
}

/// Counts an attempt that ended with `outcome` (`completed`, `failed`,
/// `retry`, `handed back`) after running for `ran`.
pub(crate) fn finished(task: &Task, outcome: &'static str, ran: Duration) {
    #[cfg(feature = "metrics")]
    {
        let labels = [
            ("queue", task.queue.clone()),
            ("handler", task.func_path.clone()),
            ("outcome", outcome.to_string()),
        ];
        metrics::counter!("omniq_tasks_finished_total", &labels).increment(1);
        metrics::histogram!("omniq_task_run_seconds", &labels).record(ran.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (task, outcome, ran);
}
