-- torc_slurm queue schema, version 2: leases, fencing tokens, attempt limits, ids never reused.
--
-- sequences: the next id of each kind. Ids only grow (a deleted workflow's ids are never handed
-- out again), and 'lease_token' numbers every claim: the fencing token of one attempt.
CREATE TABLE sequences (
    name TEXT PRIMARY KEY,
    next INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO sequences (name, next) SELECT 'workflows', COALESCE(MAX(id), 0) + 1 FROM workflows;
INSERT INTO sequences (name, next) SELECT 'jobs', COALESCE(MAX(id), 0) + 1 FROM jobs;
INSERT INTO sequences (name, next) SELECT 'dependency_sets', COALESCE(MAX(id), 0) + 1 FROM dependency_sets;
INSERT INTO sequences (name, next) SELECT 'files', COALESCE(MAX(id), 0) + 1 FROM files;
INSERT INTO sequences (name, next) SELECT 'user_data', COALESCE(MAX(id), 0) + 1 FROM user_data;
INSERT INTO sequences (name, next) SELECT 'runners', COALESCE(MAX(id), 0) + 1 FROM runners;
INSERT INTO sequences (name, next) SELECT 'lease_token', COALESCE(MAX(attempt), 0) + 1 FROM jobs;

-- A runner's lease: lease_seq counts its renewals (observers age it in their own clock while the
-- number stands still). host_key (boot id + pid namespace) says when its pid can be checked here;
-- token marks every process it started (TORC_RUNNER_TOKEN), so they can be found and killed.
ALTER TABLE runners ADD COLUMN lease_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runners ADD COLUMN host_key TEXT;
ALTER TABLE runners ADD COLUMN pid_started REAL;
ALTER TABLE runners ADD COLUMN token TEXT;
ALTER TABLE runners ADD COLUMN slurm_step_id TEXT;
ALTER TABLE runners ADD COLUMN fence_note TEXT;

-- A job's current attempt holds lease_token; interrupted counts attempts that ended lost,
-- terminated or timed out, up to max_attempts.
ALTER TABLE jobs ADD COLUMN lease_token INTEGER;
ALTER TABLE jobs ADD COLUMN pid INTEGER;
ALTER TABLE jobs ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 3;

-- late = 1: the outcome of an attempt whose lease was already gone; recorded, never applied.
ALTER TABLE results ADD COLUMN lease_token INTEGER;
ALTER TABLE results ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runners_by_workflow ON runners (workflow_id, status);
