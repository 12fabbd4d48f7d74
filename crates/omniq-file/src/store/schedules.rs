//! Schedules in the file store: one JSON file holding them all
//! (`schedules.json`), rewritten whole under the store lock, and the fire of
//! a tick, which stores the tick's task and then moves the schedule on.
//!
//! The two writes are not one: a crash between them leaves the schedule at
//! the tick, whose next fire finds the tick's task holding its key and only
//! moves the schedule on. (Should that task also have finished before the
//! store is used again, the tick runs twice: at least once, as everywhere.)

use std::collections::BTreeMap;

use omniq_core::schedule::{decide_put, may_fire, PutAnswer, PutSchedule, Schedule};

use super::*;

/// The schedules, by name.
type Schedules = BTreeMap<String, Schedule>;

impl Store {
    fn read_schedules(&self) -> Result<Schedules> {
        let path = &self.layout().schedules;
        let Some(bytes) = read_optional(path)? else {
            return Ok(Schedules::new());
        };
        let list: Vec<Schedule> = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: format!("not a JSON array of schedules: {e}"),
        })?;
        Ok(list.into_iter().map(|s| (s.name.clone(), s)).collect())
    }

    fn write_schedules(&self, schedules: &Schedules) -> Result<()> {
        let list: Vec<&Schedule> = schedules.values().collect();
        self.disk
            .write_atomic(&self.layout().schedules, &serde_json::to_vec_pretty(&list)?)
    }

    pub fn put_schedule(&self, schedule: Schedule, mode: PutSchedule) -> Result<PutAnswer> {
        self.locked(|_| {
            let mut schedules = self.read_schedules()?;
            let existing = schedules.get(&schedule.name).cloned();
            let (write, answer) = decide_put(schedule, existing, mode);
            if let Some(write) = write {
                schedules.insert(write.name.clone(), write);
                self.write_schedules(&schedules)?;
            }
            Ok(answer)
        })
    }

    pub fn schedules(&self) -> Result<Vec<Schedule>> {
        Ok(self.read_schedules()?.into_values().collect())
    }

    pub fn remove_schedule(&self, name: &str) -> Result<bool> {
        self.locked(|_| {
            let mut schedules = self.read_schedules()?;
            let removed = schedules.remove(name).is_some();
            if removed {
                self.write_schedules(&schedules)?;
            }
            Ok(removed)
        })
    }

    pub fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        self.locked(|_| {
            let mut schedules = self.read_schedules()?;
            let Some(schedule) = schedules.get_mut(name) else {
                return Ok(false);
            };
            schedule.paused = paused;
            self.write_schedules(&schedules)?;
            Ok(true)
        })
    }

    pub fn skip_schedule(&self, name: &str, due: OffsetDateTime, next: OffsetDateTime) -> Result<bool> {
        self.locked(|_| {
            let mut schedules = self.read_schedules()?;
            if !may_fire(schedules.get(name), due) {
                return Ok(false);
            }
            if let Some(schedule) = schedules.get_mut(name) {
                schedule.fired(due, next, None);
            }
            self.write_schedules(&schedules)?;
            Ok(true)
        })
    }

    pub fn fire_schedule(
        &self,
        name: &str,
        due: OffsetDateTime,
        next: OffsetDateTime,
        task: Task,
    ) -> Result<Option<Enqueued>> {
        self.locked(|state| {
            let mut schedules = self.read_schedules()?;
            if !may_fire(schedules.get(name), due) {
                return Ok(None);
            }
            if self.layout().record(task.id).exists() {
                return Err(Error::conflict(task.id, "a task with this id already exists"));
            }
            let (tasks, mut answers) = split_duplicates(vec![task], |key, now| self.key_holder_at(key, now))?;
            let saves = tasks.into_iter().map(|task| Save { task, old: None }).collect();
            self.apply(state, saves, Vec::new())?;
            let answer = answers.pop();
            if let Some(schedule) = schedules.get_mut(name) {
                schedule.fired(due, next, answer.as_ref());
            }
            self.write_schedules(&schedules)?;
            Ok(answer)
        })
    }
}
