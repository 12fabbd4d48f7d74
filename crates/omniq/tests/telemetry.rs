//! OpenTelemetry and metrics through the public API (features `otel` and
//! `file`): the trace context of the enqueueing span is stored with the task,
//! the execution span links to it (an in-memory exporter records both), and
//! the pool's counters and histograms reach a `metrics` recorder.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use omniq::{BackendKind, ContextExt, HandlerError, OmniQ, Registry, Settings, TaskContext};
use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_execution_span_links_to_the_enqueueing_span_and_metrics_are_counted() {
    // Spans go to memory through the tracing layer; metrics to a recorder
    // whose snapshot the test reads. Both are global: this binary holds
    // this one test.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("omniq-test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::builder()
        .backend(BackendKind::File)
        .base_dir(dir.path())
        .build()
        .unwrap();
    let q = OmniQ::open(settings).await.unwrap();

    // Enqueued inside the program's span: its context goes with the task.
    let checkout = tracing::info_span!("checkout");
    let enqueuer = checkout.context().span().span_context().clone();
    assert!(enqueuer.is_valid());
    let id = q
        .task("add", &(2, 3))
        .unwrap()
        .queue("billing")
        .enqueue()
        .instrument(checkout.clone())
        .await
        .unwrap();
    drop(checkout);
    let stored = q.get(id).await.unwrap();
    let traceparent = stored
        .meta
        .get("traceparent")
        .expect("the trace context is stored");
    assert_eq!(
        traceparent,
        &format!("00-{}-{}-01", enqueuer.trace_id(), enqueuer.span_id())
    );
    // Outside any span, nothing is stored.
    let plain = q.enqueue("add", &(1, 1)).await.unwrap();
    assert!(q.get(plain).await.unwrap().meta.is_empty());

    let mut registry = Registry::new();
    registry.register(
        "add",
        |(a, b): (i64, i64)| async move { Ok::<_, HandlerError>(a + b) },
    );
    // A handler's follow-up work carries the context of the attempt's span.
    registry.register_with_context("fan_out", |(): (), ctx: TaskContext| async move {
        let queue = ctx.queue().map_err(HandlerError::fatal)?;
        let id = queue.enqueue("add", &(0, 0)).await.map_err(HandlerError::retry)?;
        Ok::<_, HandlerError>(id.to_string())
    });
    let fan_out = q.enqueue("fan_out", &()).await.unwrap();
    let pool = q
        .worker(registry)
        .queue("default", 1)
        .queue("billing", 1)
        .start()
        .unwrap();
    q.wait_result(id, Duration::from_secs(20)).await.unwrap();
    q.wait_result(plain, Duration::from_secs(20)).await.unwrap();
    let follow_up: String = q
        .wait_result(fan_out, Duration::from_secs(20))
        .await
        .unwrap()
        .value_as()
        .unwrap()
        .unwrap();
    let follow_up = q.get(follow_up.parse().unwrap()).await.unwrap();
    q.wait_result(follow_up.id, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(pool.shutdown(Duration::from_secs(5)).await.drained);
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let process = spans
        .iter()
        .find(|span| span.name == "process billing")
        .unwrap_or_else(|| {
            panic!(
                "no execution span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(process.span_kind, SpanKind::Consumer);
    let links: Vec<_> = process
        .links
        .iter()
        .map(|link| link.span_context.clone())
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(
        (links[0].trace_id(), links[0].span_id()),
        (enqueuer.trace_id(), enqueuer.span_id())
    );
    assert_ne!(
        process.span_context.trace_id(),
        enqueuer.trace_id(),
        "linked, not a child of a span that ended long ago"
    );
    let attribute = |name: &str| {
        process
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == name)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attribute("messaging.system").as_deref(), Some("omniq"));
    assert_eq!(
        attribute("messaging.destination.name").as_deref(),
        Some("billing")
    );
    assert_eq!(attribute("messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(attribute("messaging.message.id"), Some(id.to_string()));
    let attempt = |id: String| {
        spans
            .iter()
            .find(|span| {
                span.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "messaging.message.id" && kv.value.to_string() == id)
            })
            .unwrap_or_else(|| panic!("no span for task {id}"))
    };
    assert!(
        attempt(plain.to_string()).links.is_empty(),
        "enqueued outside any span"
    );
    let parent = attempt(fan_out.to_string()).span_context.clone();
    assert_eq!(
        follow_up.meta.get("traceparent"),
        Some(&format!("00-{}-{}-01", parent.trace_id(), parent.span_id())),
        "the follow-up links to the attempt that enqueued it"
    );

    // One start and one completion per task, per queue and handler, with
    // the run time and the wait recorded.
    let metrics: Vec<_> = snapshotter.snapshot().into_vec();
    let find = |name: &str, labels: &[(&str, &str)]| {
        metrics
            .iter()
            .find(|(key, _, _, _)| {
                let key = key.key();
                key.name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.labels().any(|label| label.key() == *k && label.value() == *v))
            })
            .map(|(_, _, _, value)| value)
    };
    let billing = [("queue", "billing"), ("handler", "add")];
    assert_eq!(
        find("omniq_tasks_started_total", &billing),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        find(
            "omniq_tasks_finished_total",
            &[("queue", "billing"), ("handler", "add"), ("outcome", "completed")]
        ),
        Some(&DebugValue::Counter(1))
    );
    for histogram in ["omniq_task_run_seconds", "omniq_task_queue_wait_seconds"] {
        match find(histogram, &billing) {
            Some(DebugValue::Histogram(values)) => assert_eq!(values.len(), 1, "{histogram}"),
            other => panic!("{histogram}: {other:?}"),
        }
    }
}
