-- carebridge schema v3 (PostgreSQL): Bulk Data export jobs (report/export.rs). Keep in step with sqlite-3-export.sql.
CREATE TABLE IF NOT EXISTS export_job (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    params TEXT NOT NULL,
    transaction_time BIGINT NOT NULL,
    progress TEXT NOT NULL,
    output TEXT NOT NULL,
    error TEXT,
    expires BIGINT,
    created BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS export_job_status ON export_job (status, expires);
