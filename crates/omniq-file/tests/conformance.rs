//! Runs the shared conformance suite against `FileStorage`.

use std::process::ExitCode;
use std::sync::Arc;

use omniq_core::conformance::{self, Factory, Fresh};
use omniq_core::Durability;
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
}

fn main() -> ExitCode {
    conformance::run_main(File)
}
