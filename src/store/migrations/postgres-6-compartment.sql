-- Patient-compartment reads (summary, $everything, access checks) find a
-- patient's resources through idx_reference by target; with rtype, param
-- and rkey in the index the query is answered from the index alone.
CREATE INDEX IF NOT EXISTS idx_reference_tc ON idx_reference (target_type, target_id, rtype, param, rkey);
DROP INDEX IF EXISTS idx_reference_t;
