-- carebridge schema v3 (sqlite): access control. Keep in step with the other dialect.
-- auth_jti: client-assertion ids seen by the token endpoint (SMART Backend Services replay
-- protection), kept until the assertion's exp (+ clock skew), then pruned.
CREATE TABLE IF NOT EXISTS auth_jti (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    exp BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX IF NOT EXISTS auth_jti_exp ON auth_jti (exp);
