-- torc_slurm queue schema, version 12: every sample of every job attempt, kept only for workflows
-- whose resource_monitor says granularity: time_series (see torc_slurm.store.samples).
--
-- Written by the runner in batches with its queue cycles. t is seconds since the attempt started;
-- a row may stand for several passes of the sampler (long attempts are thinned to at most
-- store.samples.MAX_ROWS rows each: mean CPU, peak RSS of the passes it covers).
CREATE TABLE job_samples (
    workflow_id      INTEGER NOT NULL,
    job_id           INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    t                REAL NOT NULL,
    cpu_percent      REAL,       -- summed over the process tree (100 = one core); NULL: first pass
    memory_bytes     INTEGER,    -- RSS summed over the process tree
    num_processes    INTEGER,
    gpu_percent      REAL,       -- mean over the job's GPUs; NULL without a GPU sampler
    gpu_memory_bytes INTEGER,
    PRIMARY KEY (job_id, attempt, t)
) WITHOUT ROWID;
CREATE INDEX job_samples_by_workflow ON job_samples (workflow_id, job_id);
