-- carebridge schema v7 (sqlite): the access audit's write-behind queue. Keep in step with the other dialect.
-- A read's or refusal's AuditEvent is durable here (one row, committed before the answer
-- leaves); pipeline::audit turns queued rows into AuditEvent resources (with their search
-- index) off the request path and deletes them in the same transaction.
CREATE TABLE IF NOT EXISTS audit_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    body TEXT NOT NULL
);
