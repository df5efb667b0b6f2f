-- torc_slurm queue schema, version 3: what restarts and failure handling need.
--
-- run_id: the workflow's initialization count; every result records the run it belongs to, so
-- reruns never overwrite history.
ALTER TABLE workflows ADD COLUMN run_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN run_id INTEGER;
-- Failure handling, per job: its handler (rules live in the workflow's spec), the retries used,
-- runtime enforcement, and the reason its last attempt ended (exit code, signal, oom, timeout,
-- walltime, lost, upstream failed).
ALTER TABLE jobs ADD COLUMN failure_handler TEXT;
ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN enforce_runtime INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN runtime_grace REAL NOT NULL DEFAULT 1.5;
ALTER TABLE jobs ADD COLUMN reason TEXT;
ALTER TABLE results ADD COLUMN reason TEXT;
-- What a job ran with (command, invocation_script, env, resources, input user data), hashed when
-- it was compiled or updated, and the hash its last completed attempt ran with: they differ when
-- the job must rerun.
ALTER TABLE jobs ADD COLUMN spec_hash TEXT;
ALTER TABLE jobs ADD COLUMN ran_hash TEXT;
-- Input files as last initialized: mtime, size and (under a size limit) a content hash.
ALTER TABLE files ADD COLUMN st_mtime REAL;
ALTER TABLE files ADD COLUMN st_size INTEGER;
ALTER TABLE files ADD COLUMN sha256 TEXT;
