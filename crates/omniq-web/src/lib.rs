//! The OmniQ dashboard: an axum router over any store that shows counts,
//! queues, throughput and tasks, and steers them (retry, cancel, pause,
//! resume, purge), with a JSON API, Prometheus metrics and live updates.
//!
//! A program mounts [`router`] in its own axum app, or runs [`serve`]; the
//! `omniq dashboard` command does the latter. See `docs/dashboard.md`.
//!
//! ```no_run
//! # async fn demo(storage: std::sync::Arc<dyn omniq_core::Storage>) -> std::io::Result<()> {
//! use omniq_web::{router, Options};
//! let dashboard = router(storage, omniq_worker::Signals::new(), Options::default());
//! let app = axum::Router::new().nest("/omniq", dashboard);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod actions;
mod api;
mod auth;
mod data;
mod guard;
mod live;
mod metrics;
mod pages;
mod workers;

pub use live::MAX_STREAMS;

/// The axum this crate is built on, so a program mounts the router with the
/// same version.
pub use axum;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use omniq_core::{Error, Result, Storage};
use omniq_worker::Signals;

/// How the dashboard runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The token a browser or client must give (bearer header, or the login
    /// form's cookie). Required on any address but loopback.
    pub token: Option<String>,
    /// Hide and refuse every action: a dashboard to look, not to steer.
    pub read_only: bool,
    /// The path the router is mounted at (e.g. `/omniq`), so its links and
    /// forms point there; empty for the root. See [`check_prefix`].
    pub prefix: String,
    /// Host names a dashboard without a token answers to besides loopback
    /// addresses, `localhost` and the address it is bound to (`--allow-host`):
    /// any other `Host` is refused, so a site whose name is made to resolve
    /// to this machine (DNS rebinding) cannot use it. With a token, every
    /// name is answered.
    pub allowed_hosts: Vec<String>,
    /// The address the dashboard listens on, which it answers to; [`serve`]
    /// sets it.
    pub bound: Option<SocketAddr>,
}

/// A mount path as the dashboard uses it: `""` for the root, else `/` and
/// segments of letters, digits and `-._~` (`omniq` and `/omniq/` give
/// `/omniq`). Anything else (`/{*rest}`, spaces, `..`) is an
/// [`Error::InvalidConfig`] naming the prefix.
pub fn check_prefix(prefix: &str) -> Result<String> {
    let trimmed = prefix.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let segments_ok = trimmed.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
    });
    match segments_ok {
        true => Ok(format!("/{trimmed}")),
        false => Err(Error::invalid_config(
            "prefix",
            format!("{prefix:?} is not a path to serve under; use letters, digits and -._~ between slashes, e.g. /omniq"),
        )),
    }
}

/// What every handler shares.
struct App {
    storage: Arc<dyn Storage>,
    signals: Arc<Signals>,
    options: Options,
    /// The token every form and API change must carry, so another site
    /// cannot make a logged-in browser act (made anew per process).
    csrf: String,
    /// The live updates every open page shares.
    live: live::Live,
}

type State = Arc<App>;

impl App {
    /// The overview's path: the prefix itself, or `/` at the root.
    fn home(&self) -> &str {
        match self.options.prefix.is_empty() {
            true => "/",
            false => &self.options.prefix,
        }
    }
}

/// The dashboard's router over `storage`, woken by `signals` (share a
/// client's, e.g. `OmniQ::signals()`, so its enqueues and finishes show at
/// once; other processes' changes show within two seconds).
///
/// A prefix that [`check_prefix`] refuses is logged and the links point to
/// the root; [`serve`] refuses it instead.
pub fn router(storage: Arc<dyn Storage>, signals: Arc<Signals>, options: Options) -> Router {
    let prefix = check_prefix(&options.prefix).unwrap_or_else(|error| {
        tracing::error!(%error, "the dashboard's links point to the root");
        String::new()
    });
    let app = Arc::new(App {
        // Behind the checking layer, as every caller reaches a store.
        storage: omniq_core::Checked::wrap(storage),
        signals,
        options: Options { prefix, ..options },
        csrf: uuid::Uuid::new_v4().simple().to_string(),
        live: live::Live::new(),
    });
    Router::new()
        .route("/", get(pages::overview))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{id}", get(pages::task))
        .route("/queues", get(pages::queues))
        .route("/workers", get(workers::page))
        .route("/fragments/overview", get(pages::overview_fragment))
        .route("/fragments/tasks", get(pages::tasks_fragment))
        .route("/confirm", get(actions::confirm))
        .route("/act", post(actions::act))
        .route("/events", get(live::events))
        .route("/metrics", get(metrics::metrics))
        .route("/api/counts", get(api::counts))
        .route("/api/queues", get(api::queues))
        .route("/api/workers", get(workers::api))
        .route("/api/tasks", get(api::tasks))
        .route("/api/tasks/{id}", get(api::task))
        .route("/api/actions", post(api::act))
        .route("/api/csrf", get(api::csrf))
        .route("/assets/live.js", get(pages::script))
        .route("/assets/style.css", get(pages::stylesheet))
        .route("/login", get(auth::login_page).post(auth::login))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth::require))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard::protect))
        .with_state(app)
}

/// Whether `addr` may be served with these options: any address but
/// loopback needs a token, so a dashboard that can retry and cancel tasks
/// is never open to a network by mistake.
pub fn check_bind(addr: SocketAddr, options: &Options) -> Result<()> {
    if !addr.ip().is_loopback() && options.token.as_deref().is_none_or(str::is_empty) {
        return Err(Error::invalid_config(
            "bind",
            format!(
                "{addr} is reachable from other machines; give a token (--token or OMNIQ_DASHBOARD_TOKEN) \
                 or bind 127.0.0.1"
            ),
        ));
    }
    Ok(())
}

/// Serves the dashboard on `listener` until `stop` completes. Refuses a
/// non-loopback address without a token (see [`check_bind`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    storage: Arc<dyn Storage>,
    signals: Arc<Signals>,
    options: Options,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("dashboard socket", e))?;
    check_bind(addr, &options)?;
    let prefix = check_prefix(&options.prefix)?;
    let options = Options {
        prefix: prefix.clone(),
        bound: Some(addr),
        ..options
    };
    let dashboard = router(storage, signals, options);
    let app = match prefix.is_empty() {
        true => dashboard,
        // `/omniq/` as well as `/omniq`: the one with the slash is sent to
        // the other, where the pages' links are made.
        false => {
            let home = prefix.clone();
            Router::new().nest(&prefix, dashboard).route(
                &format!("{prefix}/"),
                get(move || async move { axum::response::Redirect::permanent(&home) }),
            )
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| Error::io("dashboard socket", e))
}
