//! SQLite adapter (rusqlite, `bundled`): one database file in WAL mode, one
//! writer thread fed by a channel, a pool of reader connections.
//!
//! A transaction ([`SqliteTx`]) owns the writer thread from `begin` until
//! `commit` or drop: the thread runs `BEGIN IMMEDIATE`, executes the
//! transaction's commands as they arrive, and `COMMIT`s or `ROLLBACK`s. So
//! writes are serialised (which also makes conditional create race-free), and
//! readers never see a partial transaction. `synchronous=NORMAL` in WAL mode
//! keeps every committed transaction atomic across a process crash; set
//! `CAREBRIDGE_SQLITE_SYNC=FULL` to also survive power loss at some write cost.

use super::*;
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Schema migrations in order; `schema_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite.sql"),
    include_str!("migrations/sqlite-2-mpi.sql"),
    include_str!("migrations/sqlite-3-export.sql"),
    include_str!("migrations/sqlite-4-auth.sql"),
    include_str!("migrations/sqlite-5-subscription.sql"),
    include_str!("migrations/sqlite-6-compartment.sql"),
    include_str!("migrations/sqlite-7-audit-queue.sql"),
];

pub struct SqliteStore {
    readers: Arc<ReaderPool>,
    writer: std::sync::mpsc::Sender<WriterMsg>,
}

/// Read-only connections. A connection goes back to the pool from inside the
/// closure that used it, so a cancelled request (client gone) cannot leak it.
struct ReaderPool {
    conns: Mutex<Vec<Connection>>,
    slots: Arc<Semaphore>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection> {
        self.conns
            .lock()
            .map_err(|_| StoreError::Backend("reader pool poisoned".into()))?
            .pop()
            .ok_or_else(|| StoreError::Backend("reader pool empty".into()))
    }
    fn give(&self, c: Connection) {
        if let Ok(mut v) = self.conns.lock() {
            v.push(c);
        }
    }
}

enum WriterMsg {
    Begin(mpsc::UnboundedReceiver<TxCmd>, oneshot::Sender<Result<()>>),
}

enum TxCmd {
    Lock,
    Current(String, String, oneshot::Sender<Result<Option<ResourceRow>>>),
    CurrentMany(Vec<(String, String)>, oneshot::Sender<Result<Vec<Option<ResourceRow>>>>),
    Query(Sql, oneshot::Sender<Result<Vec<ResourceRow>>>),
    Write(Vec<VersionWrite>, oneshot::Sender<Result<()>>),
    Execute(Sql, oneshot::Sender<Result<u64>>),
    ExecuteMany(Vec<Sql>, oneshot::Sender<Result<u64>>),
    Rows(Sql, oneshot::Sender<Result<Vec<Vec<SqlValue>>>>),
    Commit(oneshot::Sender<Result<()>>),
}

fn backend(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            return StoreError::Conflict(msg.clone().unwrap_or_else(|| e.to_string()));
        }
    }
    StoreError::Backend(e.to_string())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    let sync = std::env::var("CAREBRIDGE_SQLITE_SYNC").unwrap_or_else(|_| "NORMAL".into());
    let sync = if sync.eq_ignore_ascii_case("FULL") { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=10000;
         PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY; PRAGMA mmap_size=268435456; PRAGMA wal_autocheckpoint=8192;"
    ))
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    fn open_blocking(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(e.to_string()))?;
            }
        }
        let writer = Connection::open(path).map_err(backend)?;
        configure(&writer).map_err(backend)?;
        migrate(&writer)?;
        let n_readers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2) * 2;
        let mut readers = Vec::with_capacity(n_readers);
        for _ in 0..n_readers {
            let c = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(backend)?;
            configure(&c).map_err(backend)?;
            c.set_prepared_statement_cache_capacity(256);
            readers.push(c);
        }
        writer.set_prepared_statement_cache_capacity(256);
        let (tx, rx) = std::sync::mpsc::channel::<WriterMsg>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let readers = Arc::new(ReaderPool { conns: Mutex::new(readers), slots: Arc::new(Semaphore::new(n_readers)) });
        Ok(SqliteStore { readers, writer: tx })
    }

    /// Run `f` on a pooled reader connection in a blocking thread.
    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = self.readers.slots.clone().acquire_owned().await.map_err(|e| StoreError::Backend(e.to_string()))?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.take()?;
            let out = f(&conn);
            pool.give(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// Run a single keyed lookup (microseconds) on the calling worker thread;
    /// falls back to a blocking thread when no reader is free.
    async fn with_reader_inline<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if let Ok(permit) = self.readers.slots.clone().try_acquire_owned() {
            let _permit = permit;
            let conn = self.readers.take()?;
            let out = f(&conn);
            self.readers.give(conn);
            return out;
        }
        self.with_reader(f).await
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)").map_err(backend)?;
    let done: i64 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0)).map_err(backend)?;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        conn.execute_batch(&format!("BEGIN; {m}; INSERT INTO schema_version (version) VALUES ({}); COMMIT;", i + 1))
            .map_err(backend)?;
    }
    Ok(())
}

fn writer_loop(mut conn: Connection, rx: std::sync::mpsc::Receiver<WriterMsg>) {
    while let Ok(WriterMsg::Begin(mut cmds, ack)) = rx.recv() {
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let _ = ack.send(Err(backend(e)));
            continue;
        }
        let _ = ack.send(Ok(()));
        let mut committed = false;
        while let Some(cmd) = cmds.blocking_recv() {
            match cmd {
                TxCmd::Lock => {}
                TxCmd::Current(t, i, reply) => {
                    let _ = reply.send(read_current(&conn, &t, &i));
                }
                TxCmd::CurrentMany(keys, reply) => {
                    let _ = reply.send(keys.iter().map(|(t, i)| read_current(&conn, t, i)).collect());
                }
                TxCmd::Query(sql, reply) => {
                    let _ = reply.send(run_query(&conn, &sql));
                }
                TxCmd::Write(ws, reply) => {
                    let _ = reply.send(write_versions(&mut conn, &ws));
                }
                TxCmd::Execute(sql, reply) => {
                    let _ = reply.send(run_execute(&conn, &sql));
                }
                TxCmd::ExecuteMany(sqls, reply) => {
                    let _ = reply.send(sqls.iter().try_fold(0, |n, s| run_execute(&conn, s).map(|k| n + k)));
                }
                TxCmd::Rows(sql, reply) => {
                    let _ = reply.send(run_rows(&conn, &sql));
                }
                TxCmd::Commit(reply) => {
                    let r = conn.execute_batch("COMMIT").map_err(backend);
                    committed = r.is_ok();
                    let _ = reply.send(r);
                    break;
                }
            }
        }
        if !committed && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

fn to_sql_params(ps: &[SqlParam]) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value as V;
    ps.iter()
        .map(|p| match p {
            SqlParam::Text(s) if s == NULL_MARKER => V::Null,
            SqlParam::Text(s) => V::Text(s.clone()),
            SqlParam::Int(i) => V::Integer(*i),
            SqlParam::Real(f) => V::Real(*f),
        })
        .collect()
}

fn row_to_resource(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResourceRow> {
    let body: Option<Vec<u8>> = r.get(6)?;
    Ok(ResourceRow {
        rkey: r.get(0)?,
        rtype: r.get(1)?,
        id: r.get(2)?,
        version: r.get(3)?,
        last_updated: r.get(4)?,
        deleted: r.get::<_, i64>(5)? != 0,
        body: body.map(Bytes::from),
    })
}

fn read_current(conn: &Connection, rtype: &str, id: &str) -> Result<Option<ResourceRow>> {
    let mut st = conn
        .prepare_cached(&format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.rtype = ?1 AND r.id = ?2"))
        .map_err(backend)?;
    st.query_row([rtype, id], row_to_resource).optional().map_err(backend)
}

fn run_query(conn: &Connection, sql: &Sql) -> Result<Vec<ResourceRow>> {
    let mut st = conn.prepare_cached(&sql.text).map_err(backend)?;
    let rows = st.query_map(params_from_iter(to_sql_params(&sql.params)), row_to_resource).map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

fn run_execute(conn: &Connection, sql: &Sql) -> Result<u64> {
    let mut st = conn.prepare_cached(&sql.text).map_err(backend)?;
    st.execute(params_from_iter(to_sql_params(&sql.params))).map(|n| n as u64).map_err(backend)
}

fn run_rows(conn: &Connection, sql: &Sql) -> Result<Vec<Vec<SqlValue>>> {
    use rusqlite::types::ValueRef;
    let mut st = conn.prepare_cached(&sql.text).map_err(backend)?;
    let n = st.column_count();
    let rows = st
        .query_map(params_from_iter(to_sql_params(&sql.params)), |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => SqlValue::Null,
                        ValueRef::Integer(v) => SqlValue::Int(v),
                        ValueRef::Real(v) => SqlValue::Real(v),
                        ValueRef::Text(t) | ValueRef::Blob(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

fn row_to_history(r: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryRow> {
    let body: Option<Vec<u8>> = r.get(6)?;
    Ok(HistoryRow {
        hkey: r.get(0)?,
        rtype: r.get(1)?,
        id: r.get(2)?,
        version: r.get(3)?,
        last_updated: r.get(4)?,
        method: r.get(5)?,
        body: body.map(Bytes::from),
    })
}

fn write_versions(conn: &mut Connection, ws: &[VersionWrite]) -> Result<()> {
    for w in ws {
        let body = w.body.as_deref();
        let deleted = i64::from(w.method == WriteMethod::Delete);
        // upsert the current row, keeping rkey stable
        let rkey: i64 = {
            let mut st = conn
                .prepare_cached(
                    "INSERT INTO resources (rtype, id, version, last_updated, deleted, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (rtype, id) DO UPDATE SET version = excluded.version, last_updated = excluded.last_updated,
                     deleted = excluded.deleted, body = excluded.body RETURNING rkey",
                )
                .map_err(backend)?;
            st.query_row(rusqlite::params![w.rtype, w.id, w.version, w.last_updated, deleted, body], |r| r.get(0))
                .map_err(backend)?
        };
        {
            let mut st = conn
                .prepare_cached(
                    "INSERT INTO history (rkey, rtype, id, version, last_updated, method, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(backend)?;
            st.execute(rusqlite::params![rkey, w.rtype, w.id, w.version, w.last_updated, w.method.as_str(), body])
                .map_err(backend)?;
        }
        if w.version > 1 {
            for t in INDEX_TABLES {
                let mut st = conn.prepare_cached(&format!("DELETE FROM {t} WHERE rkey = ?1")).map_err(backend)?;
                st.execute([rkey]).map_err(backend)?;
            }
        }
        for row in &w.index {
            let (table, cols, vals) = index_insert(row);
            let n = vals.len();
            let placeholders: String = (0..n).map(|i| format!(", ?{}", i + 4)).collect();
            let sql = format!("INSERT INTO {table} (rkey, rtype, param, {cols}) VALUES (?1, ?2, ?3{placeholders})");
            let mut st = conn.prepare_cached(&sql).map_err(backend)?;
            let mut all = vec![
                rusqlite::types::Value::Integer(rkey),
                rusqlite::types::Value::Text(w.rtype.clone()),
                rusqlite::types::Value::Text(row.param.clone()),
            ];
            all.extend(to_sql_params(&vals));
            st.execute(params_from_iter(all)).map_err(backend)?;
        }
    }
    Ok(())
}

/// A transaction on the writer thread. It takes the writer lazily, on its
/// first command, so the pipeline's CPU work before that (parsing, reference
/// rewriting, index extraction) overlaps with other transactions' writes.
pub struct SqliteTx {
    writer: std::sync::mpsc::Sender<WriterMsg>,
    cmds: Option<mpsc::UnboundedSender<TxCmd>>,
}

impl SqliteTx {
    async fn started(&mut self) -> Result<&mpsc::UnboundedSender<TxCmd>> {
        if self.cmds.is_none() {
            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
            let (ack_tx, ack_rx) = oneshot::channel();
            self.writer
                .send(WriterMsg::Begin(cmd_rx, ack_tx))
                .map_err(|_| StoreError::Backend("sqlite writer gone".into()))?;
            ack_rx.await.map_err(|_| StoreError::Backend("sqlite writer gone".into()))??;
            self.cmds = Some(cmd_tx);
        }
        Ok(self.cmds.as_ref().expect("started"))
    }

    async fn call<T>(&mut self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> TxCmd) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.started().await?.send(make(tx)).map_err(|_| StoreError::Backend("sqlite writer gone".into()))?;
        rx.await.map_err(|_| StoreError::Backend("sqlite writer gone".into()))?
    }
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn lock(&mut self, _key: &str) -> Result<()> {
        // taking the writer is the lock
        self.started().await?.send(TxCmd::Lock).map_err(|_| StoreError::Backend("sqlite writer gone".into()))
    }
    async fn current(&mut self, rtype: &str, id: &str) -> Result<Option<ResourceRow>> {
        let (t, i) = (rtype.to_owned(), id.to_owned());
        self.call(|r| TxCmd::Current(t, i, r)).await
    }
    async fn current_many(&mut self, keys: &[(String, String)]) -> Result<Vec<Option<ResourceRow>>> {
        let keys = keys.to_vec();
        self.call(|r| TxCmd::CurrentMany(keys, r)).await
    }
    async fn query(&mut self, sql: Sql) -> Result<Vec<ResourceRow>> {
        self.call(|r| TxCmd::Query(sql, r)).await
    }
    async fn write(&mut self, writes: Vec<VersionWrite>) -> Result<()> {
        self.call(|r| TxCmd::Write(writes, r)).await
    }
    async fn execute(&mut self, sql: Sql) -> Result<u64> {
        self.call(|r| TxCmd::Execute(sql, r)).await
    }
    async fn execute_many(&mut self, sqls: Vec<Sql>) -> Result<u64> {
        self.call(|r| TxCmd::ExecuteMany(sqls, r)).await
    }
    async fn rows(&mut self, sql: Sql) -> Result<Vec<Vec<SqlValue>>> {
        self.call(|r| TxCmd::Rows(sql, r)).await
    }
    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.cmds.is_none() {
            return Ok(()); // nothing was done
        }
        self.call(TxCmd::Commit).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(SqliteTx { writer: self.writer.clone(), cmds: None }))
    }

    async fn read(&self, rtype: &str, id: &str) -> Result<Option<ResourceRow>> {
        let (t, i) = (rtype.to_owned(), id.to_owned());
        self.with_reader_inline(move |c| read_current(c, &t, &i)).await
    }

    async fn vread(&self, rtype: &str, id: &str, version: i64) -> Result<Option<HistoryRow>> {
        let (t, i) = (rtype.to_owned(), id.to_owned());
        self.with_reader_inline(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT hkey, rtype, id, version, last_updated, method, body FROM history
                     WHERE rtype = ?1 AND id = ?2 AND version = ?3",
                )
                .map_err(backend)?;
            st.query_row(rusqlite::params![t, i, version], row_to_history).optional().map_err(backend)
        })
        .await
    }

    async fn history(&self, q: HistoryQuery) -> Result<Vec<HistoryRow>> {
        let sql = history_sql(&q);
        self.with_reader(move |c| {
            let mut st = c.prepare_cached(&sql.text).map_err(backend)?;
            let rows = st.query_map(params_from_iter(to_sql_params(&sql.params)), row_to_history).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn query(&self, sql: Sql) -> Result<Vec<ResourceRow>> {
        self.with_reader(move |c| run_query(c, &sql)).await
    }

    async fn count(&self, sql: Sql) -> Result<i64> {
        self.with_reader(move |c| {
            let mut st = c.prepare_cached(&sql.text).map_err(backend)?;
            st.query_row(params_from_iter(to_sql_params(&sql.params)), |r| r.get(0)).map_err(backend)
        })
        .await
    }

    async fn pairs(&self, sql: Sql) -> Result<Vec<(String, String)>> {
        self.with_reader(move |c| {
            let mut st = c.prepare_cached(&sql.text).map_err(backend)?;
            let rows = st
                .query_map(params_from_iter(to_sql_params(&sql.params)), |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn rows(&self, sql: Sql) -> Result<Vec<Vec<SqlValue>>> {
        self.with_reader_inline(move |c| run_rows(c, &sql)).await
    }
}

/// History query, shared by both adapters (newest first).
pub(crate) fn history_sql(q: &HistoryQuery) -> Sql {
    let mut sql = Sql::new("SELECT hkey, rtype, id, version, last_updated, method, body FROM history WHERE 1=1");
    match &q.scope {
        HistoryScope::System => {}
        HistoryScope::Type(t) => {
            sql.push(" AND rtype = ").text_param(t.clone());
        }
        HistoryScope::Instance(t, i) => {
            sql.push(" AND rtype = ").text_param(t.clone()).push(" AND id = ").text_param(i.clone());
        }
    }
    if let Some(s) = q.since {
        sql.push(" AND last_updated >= ").int_param(s);
    }
    if let Some(b) = q.before {
        sql.push(" AND last_updated <= ").int_param(b);
    }
    if let Some(h) = q.before_hkey {
        sql.push(" AND hkey < ").int_param(h);
    }
    sql.push(" ORDER BY hkey DESC LIMIT ").int_param(q.limit as i64);
    sql
}
