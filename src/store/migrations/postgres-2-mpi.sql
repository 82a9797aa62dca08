-- carebridge schema v2 (PostgreSQL): the master patient index. Keep in step with sqlite-2-mpi.sql.
-- mpi_patient: one row per live Patient: its link group (= Person id), how it joined
-- (new, deterministic, auto, manual, merge), Person.link assurance, score, matching features (JSON).
CREATE TABLE IF NOT EXISTS mpi_patient (
    pid TEXT COLLATE "C" PRIMARY KEY,
    grp TEXT COLLATE "C" NOT NULL,
    how TEXT COLLATE "C" NOT NULL,
    assurance TEXT COLLATE "C" NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    feat TEXT COLLATE "C" NOT NULL,
    updated BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS mpi_patient_grp ON mpi_patient (grp, pid);
-- mpi_block: blocking keys (candidate selection)
CREATE TABLE IF NOT EXISTS mpi_block (bkey TEXT COLLATE "C" NOT NULL, pid TEXT COLLATE "C" NOT NULL);
CREATE INDEX IF NOT EXISTS mpi_block_k ON mpi_block (bkey, pid);
CREATE INDEX IF NOT EXISTS mpi_block_p ON mpi_block (pid);
-- mpi_pair: candidate pairs (a < b) under review (task = the Task id) or declared distinct (nomatch)
CREATE TABLE IF NOT EXISTS mpi_pair (
    a TEXT COLLATE "C" NOT NULL,
    b TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    task TEXT COLLATE "C",
    score DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (a, b)
);
CREATE INDEX IF NOT EXISTS mpi_pair_b ON mpi_pair (b, a);
