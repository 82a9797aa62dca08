//! Durable storage of FHIR resources, their history and their search index,
//! behind one trait with two adapters: SQLite (`sqlite.rs`, embedded default)
//! and PostgreSQL (`postgres.rs`, production / scale-out).
//!
//! Schema (the contract between `search`, which plans queries, and the
//! adapters, which write rows); identical in both dialects, see `migrations/`:
//!
//! * `resources(rkey, rtype, id, version, last_updated, deleted, body)` — the
//!   current version of every resource; `body` holds the exact JSON bytes
//!   stored (what the member sent plus server-set `id`/`meta`), NULL once
//!   deleted. `rkey` is a surrogate key that never changes for a resource.
//! * `history(hkey, rkey, rtype, id, version, last_updated, method, body)` —
//!   every version ever written; `hkey` orders system-wide history.
//! * `idx_string / idx_token / idx_reference / idx_date / idx_number /
//!   idx_quantity / idx_uri` — one row per extracted search value of the
//!   current version, keyed by `rkey` and the parameter code.
//!
//! * `mpi_patient / mpi_block / mpi_pair` — the master patient index (schema
//!   v2, written by `identity` through [`StoreTx::execute`]/[`StoreTx::rows`]):
//!   each Patient's link group and matching features, its blocking keys, and
//!   candidate pairs under review or declared distinct.
//!
//! Times are microseconds since the Unix epoch (UTC) in BIGINT columns.
//!
//! Invariant: one [`StoreTx`] is one database transaction; nothing it wrote is
//! visible to readers before `commit`, and dropping it without `commit` rolls
//! everything back (a crash mid-way leaves the database as before).
//! Invariant: `store` imports nothing from domain modules; SQL text comes in
//! through [`Sql`] with `?` placeholders, never with interpolated values.

pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (e.g. two creates raced for one id).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database failed; not the client's fault.
    #[error("database error: {0}")]
    Backend(String),
    #[error("database URL not understood: {0}")]
    BadUrl(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A bound SQL parameter. NULL is never bound (queries say `IS NULL`).
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Text(String),
    Int(i64),
    Real(f64),
}

/// A column value of a generic row ([`StoreTx::rows`], [`Store::rows`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl SqlValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            SqlValue::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SqlValue::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            SqlValue::Real(f) => Some(*f),
            SqlValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

/// SQL text with `?` placeholders and their parameters, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sql {
    pub text: String,
    pub params: Vec<SqlParam>,
}

impl Sql {
    pub fn new(text: impl Into<String>) -> Self {
        Sql { text: text.into(), params: vec![] }
    }
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }
    pub fn text_param(&mut self, v: impl Into<String>) -> &mut Self {
        self.text.push('?');
        self.params.push(SqlParam::Text(v.into()));
        self
    }
    pub fn int_param(&mut self, v: i64) -> &mut Self {
        self.text.push('?');
        self.params.push(SqlParam::Int(v));
        self
    }
    pub fn real_param(&mut self, v: f64) -> &mut Self {
        self.text.push('?');
        self.params.push(SqlParam::Real(v));
        self
    }
    pub fn append(&mut self, other: Sql) -> &mut Self {
        self.text.push_str(&other.text);
        self.params.extend(other.params);
        self
    }
}

/// The current version of a resource.
#[derive(Debug, Clone)]
pub struct ResourceRow {
    pub rkey: i64,
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub deleted: bool,
    pub body: Option<Bytes>,
}

/// The columns a resource query must select, in this order.
pub const RESOURCE_COLUMNS: &str = "r.rkey, r.rtype, r.id, r.version, r.last_updated, r.deleted, r.body";

/// One version from the history table.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub hkey: i64,
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    /// `POST`, `PUT` or `DELETE`
    pub method: String,
    pub body: Option<Bytes>,
}

/// Which history to read.
#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// only versions with `last_updated >= since`
    pub since: Option<i64>,
    /// only versions with `last_updated <= at_or_before` (`_at` upper bound)
    pub before: Option<i64>,
    /// page cursor: only `hkey < before_hkey` (history is newest first)
    pub before_hkey: Option<i64>,
    pub limit: usize,
}

/// A search index value of one parameter (the shape of the `idx_*` tables).
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// normalized (lower-case, accents removed) and exact text
    String { norm: String, exact: String },
    Token { system: Option<String>, code: Option<String> },
    Reference { target_type: Option<String>, target_id: Option<String>, url: String },
    Date { lo: i64, hi: i64 },
    Number { value: f64, lo: f64, hi: f64 },
    Quantity { system: Option<String>, code: Option<String>, value: f64, lo: f64, hi: f64 },
    Uri { uri: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    pub param: String,
    pub value: IndexValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    Post,
    Put,
    Delete,
}

impl WriteMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Post => "POST",
            WriteMethod::Put => "PUT",
            WriteMethod::Delete => "DELETE",
        }
    }
}

/// One new version to write (create, update or delete).
#[derive(Debug, Clone)]
pub struct VersionWrite {
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub method: WriteMethod,
    /// None for a delete
    pub body: Option<Bytes>,
    pub index: Vec<IndexRow>,
}

/// One database transaction.
#[async_trait]
pub trait StoreTx: Send {
    /// Serialise with other transactions that take the same key until commit
    /// (PostgreSQL advisory lock; SQLite has a single writer anyway).
    async fn lock(&mut self, key: &str) -> Result<()>;
    /// The current row of a resource (deleted rows too), seeing this transaction's writes.
    async fn current(&mut self, rtype: &str, id: &str) -> Result<Option<ResourceRow>>;
    /// The current rows of several resources at once (one round trip where the adapter can).
    async fn current_many(&mut self, keys: &[(String, String)]) -> Result<Vec<Option<ResourceRow>>> {
        let mut out = Vec::with_capacity(keys.len());
        for (t, i) in keys {
            out.push(self.current(t, i).await?);
        }
        Ok(out)
    }
    /// Run a resource query (must select [`RESOURCE_COLUMNS`]) inside the transaction.
    async fn query(&mut self, sql: Sql) -> Result<Vec<ResourceRow>>;
    /// Write new versions: history rows, current rows, index rows.
    async fn write(&mut self, writes: Vec<VersionWrite>) -> Result<()>;
    /// Run a statement (INSERT/UPDATE/DELETE on a non-resource table such as
    /// the MPI's); returns the number of rows changed.
    async fn execute(&mut self, sql: Sql) -> Result<u64>;
    /// Run several statements in order (one round trip where the adapter
    /// can); returns the rows changed in all.
    async fn execute_many(&mut self, sqls: Vec<Sql>) -> Result<u64> {
        let mut n = 0;
        for s in sqls {
            n += self.execute(s).await?;
        }
        Ok(n)
    }
    /// Run a query returning generic rows, inside the transaction.
    async fn rows(&mut self, sql: Sql) -> Result<Vec<Vec<SqlValue>>>;
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// The storage backend.
#[async_trait]
pub trait Store: Send + Sync {
    /// `sqlite` or `postgres`
    fn kind(&self) -> &'static str;
    async fn begin(&self) -> Result<Box<dyn StoreTx>>;
    async fn read(&self, rtype: &str, id: &str) -> Result<Option<ResourceRow>>;
    async fn vread(&self, rtype: &str, id: &str, version: i64) -> Result<Option<HistoryRow>>;
    async fn history(&self, q: HistoryQuery) -> Result<Vec<HistoryRow>>;
    /// Run a resource query (must select [`RESOURCE_COLUMNS`]).
    async fn query(&self, sql: Sql) -> Result<Vec<ResourceRow>>;
    /// Run a query returning one integer (a count).
    async fn count(&self, sql: Sql) -> Result<i64>;
    /// Run a query returning (type, id) string pairs (include resolution).
    async fn pairs(&self, sql: Sql) -> Result<Vec<(String, String)>>;
    /// Run a query returning generic rows (TEXT, BIGINT, REAL columns).
    async fn rows(&self, sql: Sql) -> Result<Vec<Vec<SqlValue>>>;
}

/// Open a store from a URL: `sqlite:PATH` (file created on first use),
/// `sqlite::memory:` is not supported (readers need a shared file), or
/// `postgres://…` / `postgresql://…`. Migrations run on open.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::BadUrl("sqlite needs a file path, e.g. sqlite:carebridge.db".into()));
        }
        let s = sqlite::SqliteStore::open(std::path::Path::new(path)).await?;
        Ok(Arc::new(s))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let s = postgres::PgStore::open(url).await?;
        Ok(Arc::new(s))
    } else {
        Err(StoreError::BadUrl(format!("{url} (expected sqlite:PATH or postgres://…)")))
    }
}

/// Split index rows per table: (table, columns, values) used by both adapters.
pub(crate) fn index_insert(row: &IndexRow) -> (&'static str, &'static str, Vec<SqlParam>) {
    use SqlParam::*;
    let opt = |o: &Option<String>| o.clone().map(Text);
    match &row.value {
        IndexValue::String { norm, exact } => (
            "idx_string",
            "norm, exact",
            vec![Text(norm.clone()), Text(exact.clone())],
        ),
        IndexValue::Token { system, code } => {
            ("idx_token", "system, code", vec_opt(vec![opt(system), opt(code)]))
        }
        IndexValue::Reference { target_type, target_id, url } => (
            "idx_reference",
            "target_type, target_id, url",
            vec_opt(vec![opt(target_type), opt(target_id), Some(Text(url.clone()))]),
        ),
        IndexValue::Date { lo, hi } => ("idx_date", "lo, hi", vec![Int(*lo), Int(*hi)]),
        IndexValue::Number { value, lo, hi } => {
            ("idx_number", "value, lo, hi", vec![Real(*value), Real(*lo), Real(*hi)])
        }
        IndexValue::Quantity { system, code, value, lo, hi } => (
            "idx_quantity",
            "system, code, value, lo, hi",
            vec_opt(vec![opt(system), opt(code), Some(Real(*value)), Some(Real(*lo)), Some(Real(*hi))]),
        ),
        IndexValue::Uri { uri } => ("idx_uri", "uri", vec![Text(uri.clone())]),
    }
}

/// NULL-able parameters are encoded as the empty marker below; adapters bind
/// them as SQL NULL. (Only index inserts need NULLs.)
pub(crate) const NULL_MARKER: &str = "\u{0}NULL";

fn vec_opt(v: Vec<Option<SqlParam>>) -> Vec<SqlParam> {
    v.into_iter().map(|p| p.unwrap_or_else(|| SqlParam::Text(NULL_MARKER.into()))).collect()
}

pub const INDEX_TABLES: [&str; 7] =
    ["idx_string", "idx_token", "idx_reference", "idx_date", "idx_number", "idx_quantity", "idx_uri"];
