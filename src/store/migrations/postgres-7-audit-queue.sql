-- carebridge schema v7 (postgres): the access audit's write-behind queue. Keep in step with the other dialect.
-- A read's or refusal's AuditEvent is durable here (one row, committed before the answer
-- leaves); pipeline::audit turns queued rows into AuditEvent resources (with their search
-- index) off the request path and deletes them in the same transaction.
CREATE TABLE IF NOT EXISTS audit_queue (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    body TEXT NOT NULL
);
