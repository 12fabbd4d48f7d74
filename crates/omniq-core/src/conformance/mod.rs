//! The shared conformance suite: every promise of [`Storage`] as a scenario that
//! every backend runs, plus a runner that names each scenario as a test.
//!
//! A backend runs the whole suite from one `harness = false` test target:
//!
//! ```no_run
//! use std::sync::Arc;
//! use omniq_core::conformance::{self, Factory, Fresh};
//! use omniq_core::MemoryStorage;
//!
//! struct Memory;
//!
//! #[omniq_core::async_trait]
//! impl Factory for Memory {
//!     fn backend(&self) -> &'static str { "memory" }
//!     async fn open(&self) -> Fresh {
//!         Fresh::new(Arc::new(MemoryStorage::new()), ())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     conformance::run_main(Memory)
//! }
//! ```
//!
//! Then `cargo test --test conformance -- claim_respects_eta` runs one scenario.

/// Defines `all()`, the scenarios of a file in a stable order, from the names
/// of their functions.
macro_rules! scenarios {
    ($($name:ident),+ $(,)?) => {
        /// The scenarios of this file, in a stable order.
        pub fn all() -> Vec<Scenario> {
            vec![$(Scenario { name: stringify!($name), run: |store| Box::pin($name(store)) }),+]
        }
    };
}

mod damaged;
mod edges;
mod finishing;
mod flow;
mod history;
mod hostile;
mod lifecycle;
mod model;
pub mod processes;
mod queues;
mod scenarios;
mod schedules;
mod shared;
mod upkeep;
mod windows;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use crate::storage::Storage;

/// One scenario: a name and the check it runs against a fresh, empty store.
/// A scenario fails by panicking, as a test does.
pub struct Scenario {
    /// The scenario's name, e.g. `claim_respects_eta`.
    pub name: &'static str,
    /// Runs the scenario.
    pub run: for<'a> fn(&'a dyn Storage) -> ScenarioFuture<'a>,
}

/// The future a scenario returns.
pub type ScenarioFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A fresh, empty store and whatever must live as long as it (a temporary folder).
pub struct Fresh {
    /// The store under test.
    pub store: Arc<dyn Storage>,
    _guard: Box<dyn Any + Send + Sync>,
}

impl Fresh {
    /// Wraps a store and a value dropped after it, e.g. a `tempfile::TempDir`.
    /// The scenarios reach the store through the checking layer
    /// ([`crate::Checked`]), as every caller does.
    pub fn new(store: Arc<dyn Storage>, guard: impl Any + Send + Sync) -> Self {
        Fresh {
            store: crate::Checked::wrap(store),
            _guard: Box::new(guard),
        }
    }

    /// The value given to [`Fresh::new`], if it is a `T`: where a factory
    /// finds the store's folder or schema again, to damage a record.
    pub fn guard<T: Any>(&self) -> Option<&T> {
        self._guard.downcast_ref()
    }
}

/// Makes fresh stores of one backend for the suite.
#[async_trait::async_trait]
pub trait Factory: Send + Sync + 'static {
    /// The backend's name, printed in the summary line.
    fn backend(&self) -> &'static str;
    /// A new, empty store that shares nothing with earlier ones.
    async fn open(&self) -> Fresh;

    /// Whether the backend can hold a record it cannot read back (a hand
    /// edit, a newer build's record during a rolling upgrade), and so runs
    /// the damaged-record scenario through [`Factory::damage`]. A store of
    /// typed values in memory cannot.
    fn can_damage(&self) -> bool {
        false
    }

    /// Makes the stored record of task `id` in `fresh` unreadable, behind
    /// the store's back. Called only when [`Factory::can_damage`].
    async fn damage(&self, fresh: &Fresh, id: crate::task::TaskId) {
        let _ = (fresh, id);
        panic!("{} cannot damage a record", self.backend());
    }
}

/// Every scenario of the suite, in a stable order: the promises of each
/// method, the edges of the status machine, then hostile and extreme input.
pub fn scenarios() -> Vec<Scenario> {
    let mut all = scenarios::all();
    all.extend(finishing::all());
    all.extend(lifecycle::all());
    all.extend(edges::all());
    all.extend(hostile::all());
    all.extend(queues::all());
    all.extend(shared::all());
    all.extend(schedules::all());
    all.extend(upkeep::all());
    all.extend(history::all());
    all.extend(windows::all());
    all.extend(flow::all());
    all
}

/// Runs every scenario and the model-based property test against stores from
/// `factory`, each as a named test (`conformance::<scenario>`,
/// `model::random_operations_agree_with_the_model`), with libtest's command-line
/// arguments (filters, `--list`, `--exact`, ...). Use it as the `main` of a
/// `harness = false` test target.
pub fn run_main(factory: impl Factory) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let factory: Arc<dyn Factory> = Arc::new(factory);
    let mut trials = Vec::new();
    for scenario in scenarios() {
        let factory = factory.clone();
        trials.push(libtest_mimic::Trial::test(
            format!("conformance::{}", scenario.name),
            move || {
                runtime().block_on(async {
                    let fresh = factory.open().await;
                    (scenario.run)(&*fresh.store).await;
                });
                Ok(())
            },
        ));
    }
    let model_factory = factory.clone();
    trials.push(libtest_mimic::Trial::test(
        "model::random_operations_agree_with_the_model",
        move || model::check(&*model_factory).map_err(Into::into),
    ));
    let damage_factory = factory.clone();
    trials.push(
        libtest_mimic::Trial::test(
            "damaged::an_unreadable_record_takes_no_other_task_down",
            move || {
                runtime().block_on(damaged::an_unreadable_record_takes_no_other_task_down(
                    &*damage_factory,
                ));
                Ok(())
            },
        )
        .with_ignored_flag(!factory.can_damage()),
    );
    let extremes_factory = factory.clone();
    trials.push(libtest_mimic::Trial::test(
        "extremes::random_times_and_durations_never_panic",
        move || hostile::check(&*extremes_factory).map_err(Into::into),
    ));
    libtest_mimic::run(&args, trials).exit_code()
}

/// What a property test's run of one input returns.
type CaseFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), proptest::test_runner::TestCaseError>> + Send + 'a>>;

/// Runs a property test: `cases` random inputs from `strategy`, each driven
/// by `run` against a fresh store from `factory`.
fn property<S: proptest::strategy::Strategy>(
    factory: &dyn Factory,
    cases: u32,
    strategy: S,
    run: for<'a> fn(&'a dyn Storage, S::Value) -> CaseFuture<'a>,
) -> Result<(), String> {
    let runtime = runtime();
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    runner
        .run(&strategy, |input| {
            runtime.block_on(async {
                let fresh = factory.open().await;
                run(&*fresh.store, input).await
            })
        })
        .map_err(|e| e.to_string())
}

/// The runtime each scenario runs on: multi-threaded, so backends that hand work
/// to other threads really race where a scenario runs calls concurrently.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start a tokio runtime")
}
