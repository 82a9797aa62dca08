//! PostgreSQL adapter (tokio-postgres with a deadpool pool), for production
//! and for scale-out: several stateless gateway replicas can share one
//! database, because all coordination lives in it — unique constraints and
//! transaction-scoped advisory locks (`pg_advisory_xact_lock`) for
//! conditional writes. The SQL stays portable (PostgreSQL-compatible
//! distributed SQL such as Citus or YugabyteDB is the path past one machine).
//!
//! Placeholders: [`Sql`] carries `?`; this adapter renumbers them to `$n`.

use super::*;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// Schema migrations in order; `schema_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres.sql"),
    include_str!("migrations/postgres-2-mpi.sql"),
    include_str!("migrations/postgres-3-export.sql"),
    include_str!("migrations/postgres-4-auth.sql"),
    include_str!("migrations/postgres-5-subscription.sql"),
    include_str!("migrations/postgres-6-compartment.sql"),
    include_str!("migrations/postgres-7-audit-queue.sql"),
];

pub struct PgStore {
    pool: Pool,
}

fn backend(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(db.message().to_owned());
        }
        return StoreError::Backend(format!("{}: {}", db.code().code(), db.message()));
    }
    StoreError::Backend(e.to_string())
}

fn pool_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("connection pool: {e}"))
}

/// `?` → `$1, $2, …` (our SQL never has `?` inside literals).
pub(crate) fn renumber(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

enum PgParam {
    Text(String),
    Null(Option<String>),
    Int(i64),
    Real(f64),
}

fn pg_params(ps: &[SqlParam]) -> Vec<PgParam> {
    ps.iter()
        .map(|p| match p {
            SqlParam::Text(s) if s == NULL_MARKER => PgParam::Null(None),
            SqlParam::Text(s) => PgParam::Text(s.clone()),
            SqlParam::Int(i) => PgParam::Int(*i),
            SqlParam::Real(f) => PgParam::Real(*f),
        })
        .collect()
}

fn refs(ps: &[PgParam]) -> Vec<&(dyn ToSql + Sync)> {
    ps.iter()
        .map(|p| match p {
            PgParam::Text(s) => s as &(dyn ToSql + Sync),
            PgParam::Null(n) => n as &(dyn ToSql + Sync),
            PgParam::Int(i) => i as &(dyn ToSql + Sync),
            PgParam::Real(f) => f as &(dyn ToSql + Sync),
        })
        .collect()
}

fn row_to_resource(r: &Row) -> ResourceRow {
    let body: Option<Vec<u8>> = r.get(6);
    ResourceRow {
        rkey: r.get(0),
        rtype: r.get(1),
        id: r.get(2),
        version: r.get(3),
        last_updated: r.get(4),
        deleted: r.get::<_, i64>(5) != 0,
        body: body.map(Bytes::from),
    }
}

fn row_to_history(r: &Row) -> HistoryRow {
    let body: Option<Vec<u8>> = r.get(6);
    HistoryRow {
        hkey: r.get(0),
        rtype: r.get(1),
        id: r.get(2),
        version: r.get(3),
        last_updated: r.get(4),
        method: r.get(5),
        body: body.map(Bytes::from),
    }
}

async fn query_resources(c: &Object, sql: &Sql) -> Result<Vec<ResourceRow>> {
    let st = c.prepare_cached(&renumber(&sql.text)).await.map_err(backend)?;
    let ps = pg_params(&sql.params);
    let rows = c.query(&st, &refs(&ps)).await.map_err(backend)?;
    Ok(rows.iter().map(row_to_resource).collect())
}

async fn run_execute(c: &Object, sql: &Sql) -> Result<u64> {
    let st = c.prepare_cached(&renumber(&sql.text)).await.map_err(backend)?;
    let ps = pg_params(&sql.params);
    c.execute(&st, &refs(&ps)).await.map_err(backend)
}

async fn run_rows(c: &Object, sql: &Sql) -> Result<Vec<Vec<SqlValue>>> {
    use tokio_postgres::types::Type;
    let st = c.prepare_cached(&renumber(&sql.text)).await.map_err(backend)?;
    let ps = pg_params(&sql.params);
    let rows = c.query(&st, &refs(&ps)).await.map_err(backend)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut v = Vec::with_capacity(r.len());
        for (i, col) in r.columns().iter().enumerate() {
            let t = col.type_();
            let val = if *t == Type::INT8 {
                r.try_get::<_, Option<i64>>(i).map(|o| o.map(SqlValue::Int))
            } else if *t == Type::INT4 {
                r.try_get::<_, Option<i32>>(i).map(|o| o.map(|x| SqlValue::Int(i64::from(x))))
            } else if *t == Type::FLOAT8 {
                r.try_get::<_, Option<f64>>(i).map(|o| o.map(SqlValue::Real))
            } else if *t == Type::FLOAT4 {
                r.try_get::<_, Option<f32>>(i).map(|o| o.map(|x| SqlValue::Real(f64::from(x))))
            } else if *t == Type::BYTEA {
                r.try_get::<_, Option<Vec<u8>>>(i).map(|o| o.map(|b| SqlValue::Text(String::from_utf8_lossy(&b).into_owned())))
            } else {
                r.try_get::<_, Option<String>>(i).map(|o| o.map(SqlValue::Text))
            };
            v.push(val.map_err(backend)?.unwrap_or(SqlValue::Null));
        }
        out.push(v);
    }
    Ok(out)
}

async fn read_current(c: &Object, rtype: &str, id: &str) -> Result<Option<ResourceRow>> {
    let st = c
        .prepare_cached(&format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.rtype = $1 AND r.id = $2"))
        .await
        .map_err(backend)?;
    let row = c.query_opt(&st, &[&rtype, &id]).await.map_err(backend)?;
    Ok(row.as_ref().map(row_to_resource))
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self> {
        let cfg: tokio_postgres::Config = url.parse().map_err(|e| StoreError::BadUrl(format!("{e}")))?;
        let mgr = Manager::from_config(cfg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let size = std::env::var("CAREBRIDGE_PG_POOL").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
        let pool = Pool::builder(mgr).max_size(size).build().map_err(pool_err)?;
        let c = pool.get().await.map_err(pool_err)?;
        // one migrator at a time across replicas
        c.batch_execute("SELECT pg_advisory_lock(7234001); CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await
            .map_err(backend)?;
        let done: i64 = c.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await.map_err(backend)?.get(0);
        for (i, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
            c.batch_execute(&format!("BEGIN; {m}; INSERT INTO schema_version (version) VALUES ({}); COMMIT;", i + 1))
                .await
                .map_err(backend)?;
        }
        c.batch_execute("SELECT pg_advisory_unlock(7234001)").await.map_err(backend)?;
        drop(c);
        Ok(PgStore { pool })
    }
}

pub struct PgTx {
    client: Option<Object>,
}

impl PgTx {
    fn c(&self) -> &Object {
        self.client.as_ref().expect("transaction client present until commit")
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // not committed: roll back before the connection returns to the pool
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = c.batch_execute("ROLLBACK").await;
                });
            } else {
                let _ = Object::take(c);
            }
        }
    }
}

/// Stable 64-bit key for advisory locks (FNV-1a).
fn lock_key(s: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

#[async_trait]
impl StoreTx for PgTx {
    async fn lock(&mut self, key: &str) -> Result<()> {
        let k = lock_key(key);
        self.c().execute("SELECT pg_advisory_xact_lock($1)", &[&k]).await.map_err(backend)?;
        Ok(())
    }
    async fn current(&mut self, rtype: &str, id: &str) -> Result<Option<ResourceRow>> {
        read_current(self.c(), rtype, id).await
    }
    async fn query(&mut self, sql: Sql) -> Result<Vec<ResourceRow>> {
        query_resources(self.c(), &sql).await
    }
    async fn write(&mut self, writes: Vec<VersionWrite>) -> Result<()> {
        let c = self.c();
        let upsert = c
            .prepare_cached(
                "INSERT INTO resources (rtype, id, version, last_updated, deleted, body) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (rtype, id) DO UPDATE SET version = excluded.version, last_updated = excluded.last_updated,
                 deleted = excluded.deleted, body = excluded.body RETURNING rkey",
            )
            .await
            .map_err(backend)?;
        let hist = c
            .prepare_cached(
                "INSERT INTO history (rkey, rtype, id, version, last_updated, method, body) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(backend)?;
        for w in &writes {
            let body: Option<&[u8]> = w.body.as_deref();
            let deleted = i64::from(w.method == WriteMethod::Delete);
            let row = c
                .query_one(&upsert, &[&w.rtype, &w.id, &w.version, &w.last_updated, &deleted, &body])
                .await
                .map_err(backend)?;
            let rkey: i64 = row.get(0);
            let method = w.method.as_str();
            c.execute(&hist, &[&rkey, &w.rtype, &w.id, &w.version, &w.last_updated, &method, &body])
                .await
                .map_err(backend)?;
            if w.version > 1 {
                for t in INDEX_TABLES {
                    let st = c.prepare_cached(&format!("DELETE FROM {t} WHERE rkey = $1")).await.map_err(backend)?;
                    c.execute(&st, &[&rkey]).await.map_err(backend)?;
                }
            }
            for row in &w.index {
                let (table, cols, vals) = index_insert(row);
                let placeholders: String = (0..vals.len()).map(|i| format!(", ${}", i + 4)).collect();
                let sql = format!("INSERT INTO {table} (rkey, rtype, param, {cols}) VALUES ($1, $2, $3{placeholders})");
                let st = c.prepare_cached(&sql).await.map_err(backend)?;
                let ps = pg_params(&vals);
                let mut all: Vec<&(dyn ToSql + Sync)> = vec![&rkey, &w.rtype, &row.param];
                all.extend(refs(&ps));
                c.execute(&st, &all).await.map_err(backend)?;
            }
        }
        Ok(())
    }
    async fn execute(&mut self, sql: Sql) -> Result<u64> {
        run_execute(self.c(), &sql).await
    }
    async fn rows(&mut self, sql: Sql) -> Result<Vec<Vec<SqlValue>>> {
        run_rows(self.c(), &sql).await
    }
    async fn commit(mut self: Box<Self>) -> Result<()> {
        let c = self.client.take().expect("client present");
        c.batch_execute("COMMIT").await.map_err(backend)
    }
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED").await.map_err(backend)?;
        Ok(Box::new(PgTx { client: Some(c) }))
    }
    async fn read(&self, rtype: &str, id: &str) -> Result<Option<ResourceRow>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        read_current(&c, rtype, id).await
    }
    async fn vread(&self, rtype: &str, id: &str, version: i64) -> Result<Option<HistoryRow>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let st = c
            .prepare_cached(
                "SELECT hkey, rtype, id, version, last_updated, method, body FROM history
                 WHERE rtype = $1 AND id = $2 AND version = $3",
            )
            .await
            .map_err(backend)?;
        let row = c.query_opt(&st, &[&rtype, &id, &version]).await.map_err(backend)?;
        Ok(row.as_ref().map(row_to_history))
    }
    async fn history(&self, q: HistoryQuery) -> Result<Vec<HistoryRow>> {
        let sql = super::sqlite::history_sql(&q);
        let c = self.pool.get().await.map_err(pool_err)?;
        let st = c.prepare_cached(&renumber(&sql.text)).await.map_err(backend)?;
        let ps = pg_params(&sql.params);
        let rows = c.query(&st, &refs(&ps)).await.map_err(backend)?;
        Ok(rows.iter().map(row_to_history).collect())
    }
    async fn query(&self, sql: Sql) -> Result<Vec<ResourceRow>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        query_resources(&c, &sql).await
    }
    async fn count(&self, sql: Sql) -> Result<i64> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let st = c.prepare_cached(&renumber(&sql.text)).await.map_err(backend)?;
        let ps = pg_params(&sql.params);
        let row = c.query_one(&st, &refs(&ps)).await.map_err(backend)?;
        Ok(row.get(0))
    }
    async fn pairs(&self, sql: Sql) -> Result<Vec<(String, String)>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        let st = c.prepare_cached(&renumber(&sql.text)).await.map_err(backend)?;
        let ps = pg_params(&sql.params);
        let rows = c.query(&st, &refs(&ps)).await.map_err(backend)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
    async fn rows(&self, sql: Sql) -> Result<Vec<Vec<SqlValue>>> {
        let c = self.pool.get().await.map_err(pool_err)?;
        run_rows(&c, &sql).await
    }
}
