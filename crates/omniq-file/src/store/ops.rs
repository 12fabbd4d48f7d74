//! The store's operations, each under the store lock: enqueue, claim, renew,
//! finish, cancel, retry, counts, purge and the lease pass, and the reads.

// The store's types and imports, which this part of it works with.
use super::*;

impl Store {
    pub fn enqueue(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        self.locked(|state| {
            for task in &tasks {
                if self.layout().record(task.id).exists() {
                    return Err(Error::conflict(task.id, "a task with this id already exists"));
                }
            }
            let (tasks, answers) = split_duplicates(tasks, |key, now| self.key_holder_at(key, now))?;
            let saves = tasks.into_iter().map(|task| Save { task, old: None }).collect();
            self.apply(state, saves, Vec::new())?;
            Ok(answers)
        })
    }

    pub(super) fn refresh_view(&self, state: &mut State) -> Result<()> {
        state.view = View::of(names(&self.layout().pending)?);
        state.view_read_at = Some(Instant::now());
        Ok(())
    }

    pub fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        self.locked(|state| {
            // Read on every claim, so a pause by another process holds from
            // its next claim on.
            if self.read_paused()?.contains(&request.queue) {
                return Ok(Vec::new());
            }
            if let Some(limits) = self.read_limits()?.remove(&request.queue) {
                let mut chosen = Vec::new();
                for name in self.admitted(state, &limits, &request)? {
                    state.view.remove(&name);
                    chosen.extend(self.claimable(&name)?);
                }
                return self.take(state, chosen, &request);
            }
            if state
                .view_read_at
                .is_none_or(|at| at.elapsed() > VIEW_STALE_AFTER)
            {
                self.refresh_view(state)?;
            }
            let due = time_key(request.now);
            let mut chosen: Vec<Task> = Vec::new();
            // Names taken in this call: a refresh reads them again until they move.
            let mut taken = BTreeSet::new();
            let mut refreshed = false;
            loop {
                let names = state
                    .view
                    .due(&request.queue, &due, request.limit - chosen.len(), &taken);
                let exhausted = names.len() < request.limit - chosen.len();
                for name in names {
                    state.view.remove(&name);
                    if let Some(task) = self.claimable(&name)? {
                        chosen.push(task);
                    }
                    taken.insert(name);
                }
                // Out of due names: other processes may have enqueued since the
                // view was read.
                if chosen.len() < request.limit
                    && exhausted
                    && !refreshed
                    && !state.view.has_other(&request.queue, &taken)
                {
                    self.refresh_view(state)?;
                    refreshed = true;
                    continue;
                }
                if chosen.len() == request.limit || exhausted {
                    break;
                }
            }
            self.take(state, chosen, &request)
        })
    }

    /// Claims the `chosen` pending tasks for `request`'s worker.
    fn take(&self, state: &mut State, chosen: Vec<Task>, request: &ClaimRequest) -> Result<Vec<Task>> {
        let mut saves = Vec::with_capacity(chosen.len());
        for task in chosen {
            let old = task.clone();
            let mut task = task;
            task.claim(&request.worker_id, request.lease_for, request.now)?;
            saves.push(Save { task, old: Some(old) });
        }
        let claimed = saves.iter().map(|s| s.task.clone()).collect();
        self.apply(state, saves, Vec::new())?;
        Ok(claimed)
    }

    /// The task a pending entry stands for, if it can be claimed; repairs the
    /// entry when it disagrees with its record.
    pub(super) fn claimable(&self, name: &str) -> Result<Option<Task>> {
        let Some(id) = entry_id(name) else { return Ok(None) };
        let path = self.layout().pending.join(name);
        match self.load(id)? {
            // The record is the authority: pending at this name means claimable.
            Loaded::Found(task) if task.status == TaskStatus::Pending && self.entry_path(&task) == path => {
                Ok(Some(task))
            }
            Loaded::Found(task) => {
                if path.exists() {
                    self.disk.remove(&path)?;
                    self.place_entry(&task, Before::Unknown)?;
                }
                Ok(None)
            }
            // An entry whose record was never written (a crash during enqueue),
            // or whose record was quarantined.
            Loaded::Missing | Loaded::Corrupt { .. } => {
                self.disk.remove(&path)?;
                Ok(None)
            }
        }
    }

    pub fn renew(
        &self,
        leases: &[LeaseRef],
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<RenewOutcome>> {
        self.locked(|_| {
            let mut answers = Vec::with_capacity(leases.len());
            for lease in leases {
                let path = self.layout().running.join(lease.id.to_string());
                match self.read_lease(lease.id) {
                    Some(mut current) if current.token == lease.token => {
                        current.expires_at = omniq_core::later(now, lease_for);
                        self.write_lease(&path, &current)?;
                        answers.push(RenewOutcome::Renewed {
                            expires_at: current.expires_at,
                        });
                    }
                    _ => answers.push(RenewOutcome::Lost),
                }
            }
            Ok(answers)
        })
    }

    /// Records progress in the record of a task running under `lease`, the
    /// running entry saying which claim is current.
    pub fn set_progress(&self, lease: LeaseRef, progress: Progress) -> Result<bool> {
        self.locked(|state| {
            let current = match self.read_lease(lease.id) {
                Some(current) if current.token == lease.token => current,
                _ => return Ok(false),
            };
            let Loaded::Found(old) = self.load(lease.id)? else {
                return Ok(false);
            };
            let mut task = old.clone();
            // The running entry holds the renewed expiry; the record still has
            // the claim's. Saving writes the entry from the record, so the
            // record takes the entry's lease first, or the save would undo
            // every renewal (here and in a journal replay).
            if task.lease.as_ref().is_some_and(|l| l.token == current.token) {
                task.lease = Some(current);
            }
            if !task.set_progress(lease.token, progress) {
                return Ok(false);
            }
            self.apply(state, vec![Save { task, old: Some(old) }], Vec::new())?;
            Ok(true)
        })
    }

    pub fn finish(&self, finishes: Vec<Finish>, now: OffsetDateTime) -> Result<Vec<FinishOutcome>> {
        self.locked(|state| {
            // Tasks as this batch has changed them so far, with their stored state.
            let mut touched: HashMap<TaskId, (Task, Task)> = HashMap::new();
            let mut created = Vec::new();
            let mut answers = Vec::with_capacity(finishes.len());
            for finish in finishes {
                let (task, _) = match touched.entry(finish.id) {
                    Entry::Occupied(slot) => slot.into_mut(),
                    Entry::Vacant(slot) => {
                        // The record's lease has the claim's token, which is all a
                        // finish checks; the entry's renewed expiry does not matter
                        // to a task that stops running, so it is not read.
                        let Loaded::Found(task) = self.load(finish.id)? else {
                            answers.push(FinishOutcome::LeaseLost);
                            continue;
                        };
                        slot.insert((task.clone(), task))
                    }
                };
                match task.finish(finish.token, finish.outcome, now)? {
                    Finished::LeaseLost => answers.push(FinishOutcome::LeaseLost),
                    Finished::Applied { status, next } => {
                        answers.push(FinishOutcome::Applied {
                            status,
                            next: next.as_ref().map(|n| n.id),
                        });
                        created.extend(next);
                    }
                }
            }
            let mut saves: Vec<Save> = touched
                .into_values()
                .filter(|(task, old)| task != old)
                .map(|(task, old)| Save { task, old: Some(old) })
                .collect();
            saves.extend(created.into_iter().map(|task| Save { task, old: None }));
            self.apply(state, saves, Vec::new())?;
            Ok(answers)
        })
    }

    /// The earliest eta of `queues` (not paused) in this process's sorted
    /// view of `pending/`, read again from the folder when stale, as claims
    /// do. Takes only this process's mutex: the view is this process's own.
    pub fn next_due(&self, queues: &[String]) -> Result<Option<OffsetDateTime>> {
        let paused = self.read_paused()?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state
            .view_read_at
            .is_none_or(|at| at.elapsed() > VIEW_STALE_AFTER)
        {
            self.refresh_view(&mut state)?;
        }
        Ok(queues
            .iter()
            .filter(|queue| !paused.contains(*queue))
            .filter_map(|queue| state.view.earliest(queue))
            .min()
            .and_then(key_time))
    }

    pub fn get(&self, id: TaskId) -> Result<Task> {
        let mut task = self.record_or_error(id)?;
        if task.status == TaskStatus::Running {
            task.lease = self.current_lease(&task);
        }
        Ok(task)
    }

    pub fn list(&self, query: ListQuery) -> Result<Vec<Task>> {
        let mut ids: Vec<TaskId> = match query.status {
            Some(status) => names(self.layout().entry_folder(status))?
                .iter()
                .filter_map(|name| entry_id(name))
                .collect(),
            None => names(&self.layout().tasks)?
                .iter()
                .filter_map(|name| record_id(name))
                .collect(),
        };
        ids.sort_unstable();
        if query.order == ListOrder::NewestFirst {
            ids.reverse();
        }
        let start = match (query.after, query.order) {
            (None, _) => 0,
            (Some(after), ListOrder::OldestFirst) => ids.partition_point(|id| *id <= after),
            (Some(after), ListOrder::NewestFirst) => ids.partition_point(|id| *id >= after),
        };
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut tasks = Vec::new();
        for id in &ids[start..] {
            if tasks.len() >= limit {
                break;
            }
            match self.get(*id) {
                Ok(task)
                    if query.status.is_none_or(|s| s == task.status)
                        && query.queue.as_ref().is_none_or(|q| *q == task.queue)
                        && query.func_path.as_ref().is_none_or(|f| *f == task.func_path) =>
                {
                    tasks.push(task)
                }
                // Gone since the folder was read, or moved on to another status.
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(Error::Corrupt { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(tasks)
    }

    pub fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.locked(|state| {
            let target = match self.record_or_error(id) {
                Ok(task) => Some(task),
                Err(Error::NotFound { .. }) => None,
                Err(other) => return Err(other),
            };
            let mut scope: Vec<Task> = target.iter().cloned().collect();
            if let CancelScope::Series(series) = CancelScope::of(id, target.as_ref()) {
                // Every live occurrence the list knows; `cancel_in_scope`
                // skips any that finished since.
                for live in self.live_in_series(series).into_iter().filter(|live| *live != id) {
                    if let Loaded::Found(task) = self.load(live)? {
                        if task.series == Some(series) {
                            scope.push(task);
                        }
                    }
                }
            }
            let olds: HashMap<TaskId, Task> = scope.iter().map(|t| (t.id, t.clone())).collect();
            let cancelled = cancel_in_scope(id, target.as_ref(), scope, now)?;
            let ids = cancelled.iter().map(|t| t.id).collect();
            let saves = cancelled
                .into_iter()
                .map(|task| {
                    let old = olds.get(&task.id).cloned();
                    Save { task, old }
                })
                .collect();
            self.apply(state, saves, Vec::new())?;
            Ok(ids)
        })
    }

    pub fn retry(&self, id: TaskId, now: OffsetDateTime) -> Result<()> {
        self.locked(|state| {
            let old = self.record_or_error(id)?;
            let mut task = old.clone();
            task.retry(now)?;
            if let Some(key) = task.unique_key.as_deref() {
                if let Some(holder) = self.key_holder(key)? {
                    return Err(omniq_core::queue::key_held(id, key, holder));
                }
            }
            self.apply(state, vec![Save { task, old: Some(old) }], Vec::new())
        })
    }

    /// Counts entries under the store lock: a change moves a task's record
    /// before its entry, so counting while one is applied could disagree with
    /// the records a reader just saw.
    pub fn counts(&self) -> Result<StatusCounts> {
        self.locked(|_| {
            let mut counts = StatusCounts::default();
            for status in TaskStatus::ALL {
                *counts.get_mut(status) = names(self.layout().entry_folder(status))?
                    .iter()
                    .filter(|name| entry_id(name).is_some())
                    .count() as u64;
            }
            Ok(counts)
        })
    }

    pub fn purge(&self, before: OffsetDateTime) -> Result<u64> {
        let cutoff = time_key(before);
        self.locked(|state| {
            let mut deletes = Vec::new();
            for status in [TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Cancelled] {
                let folder = self.layout().entry_folder(status);
                for name in names(folder)? {
                    let (Some(key), Some(id)) = (entry_key(&name), entry_id(&name)) else {
                        continue;
                    };
                    if key >= cutoff.as_str() {
                        continue;
                    }
                    match self.load(id)? {
                        Loaded::Found(task) if task.status == status => deletes.push(task),
                        // An entry that outlived its record.
                        _ => self.disk.remove(&folder.join(&name))?,
                    }
                }
            }
            let purged = deletes.len() as u64;
            self.apply(state, Vec::new(), deletes)?;
            Ok(purged)
        })
    }

    pub fn requeue_expired(&self, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.locked(|state| {
            self.restore_missing_entries(state)?;
            let mut saves = Vec::new();
            let mut expired = Vec::new();
            for name in names(&self.layout().running)? {
                if expired.len() >= omniq_core::storage::REQUEUE_BATCH {
                    break;
                }
                let Some(id) = entry_id(&name) else { continue };
                let path = self.layout().running.join(&name);
                let mut task = match self.load(id)? {
                    Loaded::Found(task) => task,
                    Loaded::Missing | Loaded::Corrupt { .. } => {
                        self.disk.remove(&path)?;
                        continue;
                    }
                };
                if task.status != TaskStatus::Running {
                    // A stray entry: put the task's entry where its record says.
                    self.disk.remove(&path)?;
                    self.place_entry(&task, Before::Unknown)?;
                    continue;
                }
                task.lease = self.current_lease(&task);
                if !task.lease_expired(now) {
                    continue;
                }
                let old = task.clone();
                let next = task.expire_lease(now)?;
                expired.push(id);
                saves.push(Save { task, old: Some(old) });
                saves.extend(next.map(|task| Save { task, old: None }));
            }
            self.apply(state, saves, Vec::new())?;
            Ok(expired)
        })
    }
}
