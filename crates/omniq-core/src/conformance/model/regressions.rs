//! The inputs of the model-based test that once failed, kept and run before
//! the random ones.

use super::{How, Op};

/// Inputs that once failed, run before the random ones on every run.
///
/// The first began a shrunk failure on PostgreSQL: a refused retry (of a
/// task that had not failed) dropped its transaction without rolling it
/// back, and the row lock it still held hid the task from the next claim's
/// `SKIP LOCKED`. Its refused changes are repeated, since a late release
/// loses only some races.
pub(super) fn regressions() -> Vec<Vec<Op>> {
    let enqueue = |delay_ms, queue, priority, key| Op::Enqueue {
        delay_ms,
        max_retries: 1,
        interval: false,
        queue,
        priority,
        key,
        ckey: None,
    };
    let mut first = vec![
        Op::Pause {
            queue: 1,
            paused: true,
        },
        enqueue(2_295, 1, -1, None),
        Op::Finish {
            pick: 0,
            how: How::HandBack,
        },
        Op::Finish {
            pick: 0,
            how: How::HandBack,
        },
        Op::Retry { pick: 0 },
        Op::Advance { ms: 19_526 },
    ];
    for round in 1..=12 {
        first.push(enqueue(0, 0, 0, Some((round % 3) as u8)));
        first.push(Op::Retry { pick: round });
        first.push(Op::Cancel { pick: 0 });
        first.push(Op::Claim { limit: 2, queue: 0 });
        first.push(Op::Finish {
            pick: round,
            how: How::Fail,
        });
        first.push(Op::Retry { pick: round });
    }
    vec![first]
}
