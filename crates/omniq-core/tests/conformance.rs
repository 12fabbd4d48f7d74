//! Runs the shared conformance suite against `MemoryStorage`.

use std::process::ExitCode;
use std::sync::Arc;

use omniq_core::conformance::{self, Factory, Fresh};
use omniq_core::MemoryStorage;

struct Memory;

#[omniq_core::async_trait]
impl Factory for Memory {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn open(&self) -> Fresh {
        Fresh::new(Arc::new(MemoryStorage::new()), ())
    }
}

fn main() -> ExitCode {
    conformance::run_main(Memory)
}
