//! Runs the shared conformance suite against `FileStorage`.

use std::process::ExitCode;
use std::sync::Arc;

use omniq_core::conformance::{self, Factory, Fresh};
use omniq_core::{Durability, TaskId};
use omniq_file::FileStorage;

struct File;

#[omniq_core::async_trait]
impl Factory for File {
    fn backend(&self) -> &'static str {
        "file"
    }

    async fn open(&self) -> Fresh {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = FileStorage::open_path(dir.path(), Durability::Normal)
            .await
            .expect("open the store");
        Fresh::new(Arc::new(store), dir)
    }

    fn can_damage(&self) -> bool {
        true
    }

    async fn damage(&self, fresh: &Fresh, id: TaskId) {
        let dir: &tempfile::TempDir = fresh.guard().expect("the store's folder");
        let record = dir.path().join("tasks").join(format!("task-{id}.json"));
        assert!(record.exists(), "no record at {}", record.display());
        std::fs::write(
            &record,
            format!(r#"{{"id": "{id}", "written_by": "a newer build"}}"#),
        )
        .unwrap();
    }
}

fn main() -> ExitCode {
    conformance::run_main(File)
}
