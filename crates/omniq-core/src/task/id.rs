//! Task ids and lease tokens: the UUIDs that name a task and one claim of it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// A task's id: a UUID v7, so ids sort by creation time.
///
/// Ids coming from users are parsed with [`TaskId::parse`], which accepts only the
/// canonical hyphenated UUID text; nothing else can reach a file path or a query.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(Uuid);

impl TaskId {
    /// A new id. Ids made in one process increase strictly, so their order is the
    /// order in which they were made.
    pub fn new() -> Self {
        TaskId(Uuid::now_v7())
    }

    /// Parses an id given by a user. Only the canonical form
    /// (`0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1f`, any case) is accepted.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidId {
            id: text.to_string(),
            reason: reason.to_string(),
        };
        if text.len() != 36 {
            return Err(invalid("expected 36 characters of hyphenated UUID text"));
        }
        let uuid = Uuid::try_parse(text).map_err(|e| invalid(&e.to_string()))?;
        Ok(TaskId(uuid))
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for TaskId {
    fn from(uuid: Uuid) -> Self {
        TaskId(uuid)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0.hyphenated())
    }
}

impl FromStr for TaskId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TaskId::parse(s)
    }
}

impl TryFrom<String> for TaskId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        TaskId::parse(&s)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.to_string()
    }
}

/// A random token naming one claim of a task. Finishing or renewing needs the
/// token of the current claim, so a worker that lost its lease cannot overwrite
/// the state written by the task's next owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseToken(pub Uuid);

impl LeaseToken {
    /// A new, unique token.
    pub fn new() -> Self {
        LeaseToken(Uuid::now_v7())
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_anything_but_a_uuid() {
        for bad in [
            "../../etc/passwd",
            "",
            "abc",
            "0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1/",
            "0190f0c28c4e7a3b9f1e2d4c6b8a0e1f",
        ] {
            assert!(
                matches!(TaskId::parse(bad), Err(Error::InvalidId { .. })),
                "{bad}"
            );
        }
        let id = TaskId::new();
        assert_eq!(TaskId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn ids_increase_in_creation_order() {
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::new()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
