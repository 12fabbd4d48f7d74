//! The scenario of a record the store holds but cannot read back: it must
//! not strand the tasks claimed with it, nor stop the lease pass, listing or
//! counting for the whole store.

use std::time::Duration;

use super::scenarios::{make, T0};
use super::Factory;
use crate::error::Error;
use crate::storage::{ClaimRequest, ListQuery};
use crate::task::{NewTask, TaskStatus};

/// One of three tasks is damaged behind the store's back: a claim answers
/// the two others, the listing and the counts go on, the lease pass hands
/// back (here: fails, with no retries left) the two others and takes the
/// damaged one out of `running`, and `damaged` names it.
pub(super) async fn an_unreadable_record_takes_no_other_task_down(factory: &dyn Factory) {
    let fresh = factory.open().await;
    let store = &*fresh.store;
    let tasks: Vec<_> = (0..3)
        .map(|_| make(NewTask::new("t").max_retries(0), T0))
        .collect();
    let ids: Vec<_> = tasks.iter().map(|t| t.id).collect();
    store.enqueue(tasks).await.unwrap();
    let bad = ids[1];
    factory.damage(&fresh, bad).await;

    let claimed = store
        .claim(ClaimRequest {
            queue: crate::DEFAULT_QUEUE.into(),
            worker_id: "w".into(),
            limit: 3,
            lease_for: Duration::from_secs(1),
            now: T0,
        })
        .await
        .expect("the claim answers with the readable tasks");
    let mut claimed_ids: Vec<_> = claimed.iter().map(|t| t.id).collect();
    claimed_ids.sort();
    assert_eq!(claimed_ids, [ids[0], ids[2]]);
    let listed: Vec<_> = store
        .list(ListQuery::default())
        .await
        .expect("listing goes on")
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, [ids[0], ids[2]]);
    store.counts().await.expect("counting goes on");
    assert!(
        matches!(
            store.get(bad).await,
            Err(Error::Corrupt { .. } | Error::NotFound { .. })
        ),
        "reading the damaged task answers what is wrong"
    );

    let later = T0 + Duration::from_secs(5);
    let mut requeued = store
        .requeue_expired(later)
        .await
        .expect("the lease pass goes on");
    requeued.sort();
    assert_eq!(requeued, [ids[0], ids[2]]);
    for id in [ids[0], ids[2]] {
        let task = store.get(id).await.unwrap();
        assert_eq!(task.status, TaskStatus::Failed);
        assert_eq!(task.error.unwrap().kind, "lease_expired");
    }
    // Nothing is left running, so no later pass trips over the damaged task.
    assert_eq!(store.counts().await.unwrap().running, 0);
    assert_eq!(
        store
            .requeue_expired(later + Duration::from_secs(60))
            .await
            .unwrap(),
        []
    );
    let damaged = store.damaged().await.unwrap();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(damaged[0].id, bad.to_string());
}
