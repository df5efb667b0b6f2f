-- torc_slurm queue schema, version 5: what the login-node views read and what jobs write.
--
-- Events: kind is the category; data holds structured JSON (or NULL); source says who posted it
-- ('runner 3', 'job 12', 'user', 'torc'). Read by id order, per workflow and per category.
ALTER TABLE events ADD COLUMN data TEXT;
ALTER TABLE events ADD COLUMN source TEXT;
CREATE INDEX events_by_workflow ON events (workflow_id, id);
CREATE INDEX events_by_kind ON events (workflow_id, kind, id);

-- User data: when an entry was last written, and by which job and attempt (NULL: the spec or a
-- person wrote it). A job's declared output entry counts as written only by that job's attempt.
ALTER TABLE user_data ADD COLUMN updated_at REAL;
ALTER TABLE user_data ADD COLUMN written_by_job_id INTEGER;
ALTER TABLE user_data ADD COLUMN written_attempt INTEGER;

-- GPU use per attempt; NULL where the runner had no GPU sampler (no nvidia-smi or NVML).
ALTER TABLE results ADD COLUMN avg_gpu_percent REAL;
ALTER TABLE results ADD COLUMN peak_gpu_memory_bytes INTEGER;

-- Per runner, summed as its outcomes are recorded: CPU time its jobs used, and the core-seconds
-- and GPU-seconds its jobs held. With the runner's size and lifetime they give utilisation.
ALTER TABLE runners ADD COLUMN job_cpu_s REAL NOT NULL DEFAULT 0;
ALTER TABLE runners ADD COLUMN held_cpu_s REAL NOT NULL DEFAULT 0;
ALTER TABLE runners ADD COLUMN held_gpu_s REAL NOT NULL DEFAULT 0;
-- gpu_sampler: 'nvidia-smi', 'nvml' or NULL (nothing to sample GPUs with on that node).
ALTER TABLE runners ADD COLUMN gpu_sampler TEXT;

-- Node use over time, one row per runner per sample (written in batches with the queue cycles).
CREATE TABLE runner_samples (
    workflow_id      INTEGER NOT NULL,
    runner_id        INTEGER NOT NULL,
    at               REAL NOT NULL,
    cpu_percent      REAL,      -- of the runner's CPUs, 0-100
    memory_bytes     INTEGER,   -- RSS of all its jobs' process trees
    gpu_percent      REAL,      -- mean over the runner's GPUs, NULL without a sampler
    gpu_memory_bytes INTEGER,
    PRIMARY KEY (runner_id, at)
) WITHOUT ROWID;
CREATE INDEX runner_samples_by_workflow ON runner_samples (workflow_id, at);

-- Results by outcome and by length (failures and the longest jobs without a scan).
CREATE INDEX results_by_status ON results (workflow_id, status);
CREATE INDEX results_by_exec ON results (workflow_id, exec_s);
