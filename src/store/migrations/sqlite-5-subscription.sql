-- carebridge schema (SQLite): topic-based subscriptions (R4 Subscriptions Backport IG). Keep in step with postgres-5-subscription.sql.
-- sub_state: one row per Subscription resource: its channel, topic, filter, the
-- event counter (events since subscription start), the delivery watermark
-- (last event number delivered; per-endpoint order = event number order),
-- error/backoff state and the delivery lease (which worker holds it until when).
CREATE TABLE IF NOT EXISTS sub_state (
    sub_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    filter TEXT,
    endpoint TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL,
    heartbeat BIGINT NOT NULL,
    owner TEXT,
    owner_type TEXT,
    active BIGINT NOT NULL,
    status TEXT NOT NULL,
    events BIGINT NOT NULL,
    delivered BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    last_error TEXT,
    next_try BIGINT NOT NULL,
    lease BIGINT NOT NULL,
    last_sent BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sub_state_due ON sub_state (active, next_try);
-- sub_event: the outbox: one row per (subscription, event number), written in the
-- same transaction as the change that caused it; kept for $events replay.
CREATE TABLE IF NOT EXISTS sub_event (
    sub_id TEXT NOT NULL,
    num BIGINT NOT NULL,
    rtype TEXT NOT NULL,
    rid TEXT NOT NULL,
    version BIGINT NOT NULL,
    method TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (sub_id, num)
)
