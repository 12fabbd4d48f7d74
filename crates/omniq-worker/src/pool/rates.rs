//! How long a pool waits for a rate-limited queue: until its rate allows the
//! next start, read from the store's buckets, instead of polling (too soon,
//! finding nothing) or sleeping through the poll interval (too late).

// The pool's shared state, counters and imports, which this part works with.
use super::*;

/// How often the pool looks again which of its queues have a rate, while
/// none of its hungry queues is known to have one.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The queues of this pool known to have a rate, and when that was read.
#[derive(Default)]
pub(super) struct Rated {
    queues: Vec<String>,
    read_at: Option<Instant>,
}

impl Rated {
    /// How long until the rate of one of the `hungry` queues allows a start
    /// (`Duration::MAX`: none of them waits for its rate).
    pub(super) async fn wait(&mut self, shared: &Shared, hungry: &[String]) -> Duration {
        let known = hungry.iter().any(|queue| self.queues.contains(queue));
        let stale = self.read_at.is_none_or(|at| at.elapsed() >= LOOK_EVERY);
        if !known && !stale {
            return Duration::MAX;
        }
        let now = shared.clock.now();
        let flows = match shared.storage.queue_flows(now).await {
            Ok(flows) => flows,
            Err(error) => {
                tracing::debug!(%error, "cannot read the queues' flow-control settings");
                return Duration::MAX;
            }
        };
        self.read_at = Some(Instant::now());
        self.queues = flows
            .iter()
            .filter(|flow| flow.limits.rate.is_some())
            .map(|flow| flow.queue.clone())
            .collect();
        flows
            .iter()
            .filter(|flow| hungry.contains(&flow.queue))
            .map(|flow| flow.next_start(now) - now)
            .filter(|until| *until > time::Duration::ZERO)
            .filter_map(|until| Duration::try_from(until).ok())
            .min()
            .unwrap_or(Duration::MAX)
    }
}
