//! The dashboard (feature `web`): a page to see and steer the queue in a
//! browser, over any backend. See `docs/dashboard.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = omniq::OmniQ::from_env().await?;
//! let options = omniq::web::Options {
//!     prefix: "/omniq".into(), // where it is mounted, for its links
//!     token: std::env::var("OMNIQ_DASHBOARD_TOKEN").ok(),
//!     ..Default::default()
//! };
//! let app = omniq::web::axum::Router::new()
//!     .route("/", omniq::web::axum::routing::get(|| async { "my app" }))
//!     .nest("/omniq", omniq::web::router(&queue, options));
//! let listener = omniq::web::TcpListener::bind("127.0.0.1:8080").await?;
//! omniq::web::axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

pub use omniq_web::{axum, check_bind, check_prefix, Options};
/// The listener [`serve`] takes.
pub use tokio::net::TcpListener;

use crate::OmniQ;

/// The dashboard's router over `queue`'s store. It shares the client's
/// signals, so the client's enqueues and its pools' finishes show at once.
pub fn router(queue: &OmniQ, options: Options) -> axum::Router {
    omniq_web::router(queue.storage().clone(), queue.signals().clone(), options)
}

/// Serves the dashboard over `queue` on `listener` until `stop` completes;
/// refuses an address other than loopback without a token.
pub async fn serve(
    queue: &OmniQ,
    listener: tokio::net::TcpListener,
    options: Options,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    omniq_web::serve(
        listener,
        queue.storage().clone(),
        queue.signals().clone(),
        options,
        stop,
    )
    .await
}
