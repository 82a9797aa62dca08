-- carebridge schema v1 (SQLite). Keep in step with postgres.sql.
CREATE TABLE IF NOT EXISTS resources (
    rkey INTEGER PRIMARY KEY,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    body BLOB,
    UNIQUE (rtype, id)
);
CREATE INDEX IF NOT EXISTS resources_type_updated ON resources (rtype, last_updated);
CREATE INDEX IF NOT EXISTS resources_type_key ON resources (rtype, rkey);
CREATE TABLE IF NOT EXISTS history (
    hkey INTEGER PRIMARY KEY,
    rkey INTEGER NOT NULL,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    method TEXT NOT NULL,
    body BLOB,
    UNIQUE (rtype, id, version)
);
CREATE INDEX IF NOT EXISTS history_type ON history (rtype, hkey);
CREATE INDEX IF NOT EXISTS history_updated ON history (last_updated);
CREATE TABLE IF NOT EXISTS idx_string (rkey INTEGER NOT NULL, rtype TEXT NOT NULL, param TEXT NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_string_q ON idx_string (rtype, param, norm);
CREATE INDEX IF NOT EXISTS idx_string_kp ON idx_string (rkey, param);
CREATE TABLE IF NOT EXISTS idx_token (rkey INTEGER NOT NULL, rtype TEXT NOT NULL, param TEXT NOT NULL, system TEXT, code TEXT);
CREATE INDEX IF NOT EXISTS idx_token_q ON idx_token (rtype, param, code, system, rkey);
CREATE INDEX IF NOT EXISTS idx_token_kp ON idx_token (rkey, param);
CREATE TABLE IF NOT EXISTS idx_reference (rkey INTEGER NOT NULL, rtype TEXT NOT NULL, param TEXT NOT NULL, target_type TEXT, target_id TEXT, url TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_reference_q ON idx_reference (rtype, param, target_id, target_type, rkey);
CREATE INDEX IF NOT EXISTS idx_reference_t ON idx_reference (target_type, target_id);
CREATE INDEX IF NOT EXISTS idx_reference_kp ON idx_reference (rkey, param);
CREATE TABLE IF NOT EXISTS idx_date (rkey INTEGER NOT NULL, rtype TEXT NOT NULL, param TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS idx_date_q ON idx_date (rtype, param, lo, hi);
CREATE INDEX IF NOT EXISTS idx_date_kp ON idx_date (rkey, param, lo, hi);
CREATE TABLE IF NOT EXISTS idx_number (rkey INTEGER NOT NULL, rtype TEXT NOT NULL, param TEXT NOT NULL, value REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL);
CREATE INDEX IF NOT EXISTS idx_number_q ON idx_number (rtype, param, value);
CREATE INDEX IF NOT EXISTS idx_number_kp ON idx_number (rkey, param, value);
CREATE TABLE IF NOT EXISTS idx_quantity (rkey INTEGER NOT NULL, rtype TEXT NOT NULL, param TEXT NOT NULL, system TEXT, code TEXT, value REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL);
CREATE INDEX IF NOT EXISTS idx_quantity_q ON idx_quantity (rtype, param, code, value);
CREATE INDEX IF NOT EXISTS idx_quantity_kp ON idx_quantity (rkey, param, value);
CREATE TABLE IF NOT EXISTS idx_uri (rkey INTEGER NOT NULL, rtype TEXT NOT NULL, param TEXT NOT NULL, uri TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_uri_q ON idx_uri (rtype, param, uri, rkey);
CREATE INDEX IF NOT EXISTS idx_uri_kp ON idx_uri (rkey, param);
