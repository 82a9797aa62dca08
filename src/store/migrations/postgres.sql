-- carebridge schema v1 (PostgreSQL). Keep in step with sqlite.sql.
CREATE TABLE IF NOT EXISTS resources (
    rkey BIGSERIAL PRIMARY KEY,
    rtype TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted BIGINT NOT NULL DEFAULT 0,
    body BYTEA,
    UNIQUE (rtype, id)
);
CREATE INDEX IF NOT EXISTS resources_type_updated ON resources (rtype, last_updated);
CREATE INDEX IF NOT EXISTS resources_type_key ON resources (rtype, rkey);
CREATE TABLE IF NOT EXISTS history (
    hkey BIGSERIAL PRIMARY KEY,
    rkey BIGINT NOT NULL,
    rtype TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    method TEXT COLLATE "C" NOT NULL,
    body BYTEA,
    UNIQUE (rtype, id, version)
);
CREATE INDEX IF NOT EXISTS history_type ON history (rtype, hkey);
CREATE INDEX IF NOT EXISTS history_updated ON history (last_updated);
CREATE TABLE IF NOT EXISTS idx_string (rkey BIGINT NOT NULL, rtype TEXT COLLATE "C" NOT NULL, param TEXT COLLATE "C" NOT NULL, norm TEXT COLLATE "C" NOT NULL, exact TEXT COLLATE "C" NOT NULL);
CREATE INDEX IF NOT EXISTS idx_string_q ON idx_string (rtype, param, norm);
CREATE INDEX IF NOT EXISTS idx_string_kp ON idx_string (rkey, param);
CREATE TABLE IF NOT EXISTS idx_token (rkey BIGINT NOT NULL, rtype TEXT COLLATE "C" NOT NULL, param TEXT COLLATE "C" NOT NULL, system TEXT COLLATE "C", code TEXT COLLATE "C");
CREATE INDEX IF NOT EXISTS idx_token_q ON idx_token (rtype, param, code, system, rkey);
CREATE INDEX IF NOT EXISTS idx_token_kp ON idx_token (rkey, param);
CREATE TABLE IF NOT EXISTS idx_reference (rkey BIGINT NOT NULL, rtype TEXT COLLATE "C" NOT NULL, param TEXT COLLATE "C" NOT NULL, target_type TEXT COLLATE "C", target_id TEXT COLLATE "C", url TEXT COLLATE "C" NOT NULL);
CREATE INDEX IF NOT EXISTS idx_reference_q ON idx_reference (rtype, param, target_id, target_type, rkey);
CREATE INDEX IF NOT EXISTS idx_reference_t ON idx_reference (target_type, target_id);
CREATE INDEX IF NOT EXISTS idx_reference_kp ON idx_reference (rkey, param);
CREATE TABLE IF NOT EXISTS idx_date (rkey BIGINT NOT NULL, rtype TEXT COLLATE "C" NOT NULL, param TEXT COLLATE "C" NOT NULL, lo BIGINT NOT NULL, hi BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_date_q ON idx_date (rtype, param, lo, hi);
CREATE INDEX IF NOT EXISTS idx_date_kp ON idx_date (rkey, param, lo, hi);
CREATE TABLE IF NOT EXISTS idx_number (rkey BIGINT NOT NULL, rtype TEXT COLLATE "C" NOT NULL, param TEXT COLLATE "C" NOT NULL, value DOUBLE PRECISION NOT NULL, lo DOUBLE PRECISION NOT NULL, hi DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS idx_number_q ON idx_number (rtype, param, value);
CREATE INDEX IF NOT EXISTS idx_number_kp ON idx_number (rkey, param, value);
CREATE TABLE IF NOT EXISTS idx_quantity (rkey BIGINT NOT NULL, rtype TEXT COLLATE "C" NOT NULL, param TEXT COLLATE "C" NOT NULL, system TEXT COLLATE "C", code TEXT COLLATE "C", value DOUBLE PRECISION NOT NULL, lo DOUBLE PRECISION NOT NULL, hi DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS idx_quantity_q ON idx_quantity (rtype, param, code, value);
CREATE INDEX IF NOT EXISTS idx_quantity_kp ON idx_quantity (rkey, param, value);
CREATE TABLE IF NOT EXISTS idx_uri (rkey BIGINT NOT NULL, rtype TEXT COLLATE "C" NOT NULL, param TEXT COLLATE "C" NOT NULL, uri TEXT COLLATE "C" NOT NULL);
CREATE INDEX IF NOT EXISTS idx_uri_q ON idx_uri (rtype, param, uri, rkey);
CREATE INDEX IF NOT EXISTS idx_uri_kp ON idx_uri (rkey, param);
