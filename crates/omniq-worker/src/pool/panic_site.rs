//! Where a handler panicked: a panic hook, installed once beside the
//! program's own, records the source location for the attempt's history.
//!
//! A `JoinError` carries the panic's message but not its location, which only
//! the panic hook sees. The hook runs on the panicking thread before the
//! unwind, while the handler's task-local slot is still in scope, so it can
//! tell a handler's panic from any other and write the location there. Every
//! panic still reaches the hook that was installed before (the default one
//! prints it), so the program's own reporting is unchanged.

use std::future::Future;
use std::sync::{Arc, Mutex, Once};

tokio::task_local! {
    static SITE: Arc<Mutex<Option<String>>>;
}

/// The location a watched handler panicked at, once it has.
pub(super) struct PanicSite(Arc<Mutex<Option<String>>>);

impl PanicSite {
    /// The first panic's location, `file:line:column`.
    pub(super) fn take(&self) -> Option<String> {
        self.0.lock().ok()?.take()
    }
}

/// Runs `handler` with a slot the panic hook fills if it panics.
pub(super) fn watch<F: Future>(handler: F) -> (impl Future<Output = F::Output>, PanicSite) {
    install();
    let slot = Arc::new(Mutex::new(None));
    (SITE.scope(slot.clone(), handler), PanicSite(slot))
}

fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(location) = info.location() {
                // Outside a handler there is no slot, and nothing is recorded.
                let _ = SITE.try_with(|slot| {
                    if let Ok(mut slot) = slot.lock() {
                        slot.get_or_insert_with(|| {
                            format!("{}:{}:{}", location.file(), location.line(), location.column())
                        });
                    }
                });
            }
            previous(info);
        }));
    });
}
