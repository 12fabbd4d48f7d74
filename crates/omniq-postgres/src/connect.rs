//! Opening a store: the connection options, the first connection that
//! answers at once when the server cannot be reached, the pool, the schema
//! check, and the listener that hears other hosts' enqueues.

use std::sync::Arc;
use std::time::Duration;

use omniq_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions as _;

use crate::{redact, schema, sql_error, wake, PostgresStorage};

/// How a [`PostgresStorage`] connects; `ConnectOptions::new(url)` gives the
/// defaults of `OMNIQ_PG_SCHEMA`, `OMNIQ_PG_CONNECTIONS` and
/// `OMNIQ_PG_LISTEN`.
#[derive(Clone)]
pub struct ConnectOptions {
    /// The server, `postgres://user:password@host:port/database`.
    pub url: String,
    /// The schema the tables live in.
    pub schema: String,
    /// The most connections the store opens at once, besides its listener.
    pub connections: u32,
    /// Listen for other hosts' enqueues (`LISTEN/NOTIFY`). `false` is the
    /// poll-only mode for a pooler such as PgBouncer: no listening
    /// connection, and no startup parameter a pooler refuses (see
    /// `docs/postgres-backend.md` for the pooler modes it works with).
    pub listen: bool,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("connections", &self.connections)
            .field("listen", &self.listen)
            .finish()
    }
}

impl ConnectOptions {
    /// The defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            schema: omniq_core::settings::DEFAULT_PG_SCHEMA.to_owned(),
            connections: omniq_core::settings::DEFAULT_PG_CONNECTIONS,
            listen: true,
        }
    }

    /// The options `settings` name (`OMNIQ_DATABASE_URL`, `OMNIQ_PG_*`).
    pub fn from_settings(settings: &omniq_core::Settings) -> Result<Self> {
        let url = settings.database_url.as_deref().ok_or_else(|| {
            Error::invalid_config(
                "OMNIQ_DATABASE_URL",
                "is needed for the postgres backend: postgres://user:password@host:port/database",
            )
        })?;
        Ok(ConnectOptions {
            url: url.to_owned(),
            schema: settings.pg_schema.clone(),
            connections: settings.pg_connections,
            listen: settings.pg_listen,
        })
    }

    /// In `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// With at most `connections` at once.
    pub fn connections(mut self, connections: u32) -> Self {
        self.connections = connections;
        self
    }

    /// Listening (`true`) or polling only.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }
}

impl PostgresStorage {
    /// Connects to `url` and prepares the OmniQ tables in `schema` (creating
    /// or migrating them; a schema of another program or of a newer OmniQ is
    /// refused untouched), with the default options.
    pub async fn connect(url: &str, schema: &str) -> Result<Self> {
        Self::connect_options(ConnectOptions::new(url).schema(schema)).await
    }

    /// As [`PostgresStorage::connect`], with a pool of `connections`.
    pub async fn connect_with(url: &str, schema: &str, connections: u32) -> Result<Self> {
        Self::connect_options(ConnectOptions::new(url).schema(schema).connections(connections)).await
    }

    /// Connects as `options` say, and prepares the schema.
    pub async fn connect_options(options: ConnectOptions) -> Result<Self> {
        Self::open_with(options, true).await
    }

    /// Connects to the database and schema `settings` name
    /// (`OMNIQ_DATABASE_URL`, `OMNIQ_PG_SCHEMA`, `OMNIQ_PG_CONNECTIONS`,
    /// `OMNIQ_PG_LISTEN`).
    pub async fn open(settings: &omniq_core::Settings) -> Result<Self> {
        Self::connect_options(ConnectOptions::from_settings(settings)?).await
    }

    /// Connects to an existing OmniQ schema only to read it: nothing is
    /// created or migrated, every change is refused with
    /// [`Error::Unsupported`], and nothing listens.
    pub async fn connect_read_only(url: &str, schema: &str) -> Result<Self> {
        let options = ConnectOptions::new(url)
            .schema(schema)
            .connections(4)
            .listen(false);
        let mut store = Self::open_with(options, false).await?;
        store.read_only = true;
        Ok(store)
    }

    /// Connects; `prepare`: create or migrate the schema, else only check
    /// that it is this build's.
    async fn open_with(options: ConnectOptions, prepare: bool) -> Result<Self> {
        let schema = options.schema.as_str();
        if schema.is_empty() || schema.len() > 63 {
            return Err(Error::invalid_config(
                "OMNIQ_PG_SCHEMA",
                format!("{schema:?} is not a schema name: 1 to 63 bytes"),
            ));
        }
        let shown = redact(&options.url);
        let unreachable =
            move |e: sqlx::Error| Error::backend("postgres", format!("cannot connect to {shown}: {e}"));
        let mut connect: PgConnectOptions = options.url.parse().map_err(&unreachable)?;
        if !options.listen {
            // No startup parameter a pooler does not know: PgBouncer refuses
            // `extra_float_digits` unless told to ignore it (OmniQ sends no
            // floats through SQL, so it changes nothing).
            connect = connect.extra_float_digits(None);
        }
        // One direct connection first: a refused or misconfigured server
        // answers at once, where the pool would keep trying until its timeout.
        let probe = connect.connect().await.map_err(&unreachable)?;
        sqlx::Connection::close(probe).await.map_err(sql_error)?;
        // No ping before each use: a broken connection fails its statement,
        // which the caller sees as an error, and a ping costs every
        // operation a round trip.
        let pool_of = |size: u32| {
            PgPoolOptions::new()
                .max_connections(size.max(1))
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(10))
        };
        // Claims commit without waiting for the disk: a claim lost in a
        // server crash leaves its task pending, as if never claimed, and
        // the worker's finish is then refused (`LeaseLost`), which is the
        // outcome of a worker crash. Every later commit (a finish) flushes
        // the log up to itself, claims before it included, so no durable
        // finish ever follows a lost claim. This halves the flushes a task
        // costs. The claims of a process come from its supervisors one at a
        // time, so two connections serve them.
        // Not in poll-only mode: a pooler refuses the `options` startup
        // parameter, and a setting made on one server connection would not
        // follow the claim to the next; claims there commit as finishes do.
        let claims_connect = match options.listen {
            true => connect.clone().options([("synchronous_commit", "off")]),
            false => connect.clone(),
        };
        let claims = pool_of(2).connect_lazy_with(claims_connect);
        let pool = pool_of(options.connections)
            .connect_with(connect)
            .await
            .map_err(&unreachable)?;
        let mut tx = pool.begin().await.map_err(&unreachable)?;
        let checked = match prepare {
            true => schema::prepare(&mut tx, schema.to_owned()).await.map(drop),
            false => schema::check(&mut tx, schema.to_owned()).await,
        };
        match (checked, prepare) {
            (Ok(()), true) => tx.commit().await.map_err(sql_error)?,
            (Ok(()), false) => tx.rollback().await.map_err(sql_error)?,
            (Err(refused), _) => {
                // Roll back and close now: a transaction left to the pool's
                // drop would hold its locks on the schema until the server
                // noticed, blocking whoever comes next.
                let _ = tx.rollback().await;
                pool.close().await;
                return Err(refused);
            }
        }
        let channel = wake::channel(schema);
        let listener = match options.listen {
            true => Some(Arc::new(wake::Listener::start(&options.url, &channel).await)),
            false => None,
        };
        Ok(PostgresStorage {
            pool,
            claims,
            read_only: false,
            s: schema::quote(schema),
            schema: schema.to_owned(),
            channel,
            listener,
            upkeep: Default::default(),
            claimed: Default::default(),
            flow: Default::default(),
        })
    }
}
