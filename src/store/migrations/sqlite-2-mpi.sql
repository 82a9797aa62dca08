-- carebridge schema v2 (SQLite): the master patient index. Keep in step with postgres-2-mpi.sql.
-- mpi_patient: one row per live Patient: its link group (= Person id), how it joined
-- (new, deterministic, auto, manual, merge), Person.link assurance, score, matching features (JSON).
CREATE TABLE IF NOT EXISTS mpi_patient (
    pid TEXT PRIMARY KEY,
    grp TEXT NOT NULL,
    how TEXT NOT NULL,
    assurance TEXT NOT NULL,
    score REAL NOT NULL,
    feat TEXT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS mpi_patient_grp ON mpi_patient (grp, pid);
-- mpi_block: blocking keys (candidate selection)
CREATE TABLE IF NOT EXISTS mpi_block (bkey TEXT NOT NULL, pid TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS mpi_block_k ON mpi_block (bkey, pid);
CREATE INDEX IF NOT EXISTS mpi_block_p ON mpi_block (pid);
-- mpi_pair: candidate pairs (a < b) under review (task = the Task id) or declared distinct (nomatch)
CREATE TABLE IF NOT EXISTS mpi_pair (
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    state TEXT NOT NULL,
    task TEXT,
    score REAL NOT NULL,
    PRIMARY KEY (a, b)
);
CREATE INDEX IF NOT EXISTS mpi_pair_b ON mpi_pair (b, a);
