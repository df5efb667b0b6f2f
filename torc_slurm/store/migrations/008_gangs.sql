-- torc_slurm queue schema, version 8: multi-node jobs (gangs) inside one allocation.
--
-- runners.free: JSON {cpus, gpus, memory_bytes} a runner can give other runners' multi-node jobs
-- until its next cycle (published by its own cycles, lowered by the claims that book it).
-- gang_shares: a multi-node job's share on a member runner other than the one that launches it.
-- The launching runner claims the job and books every share in ONE transaction (so two gangs
-- cannot each hold half of their nodes); each member acknowledges (acked = 1, with the GPU ids it
-- set aside) or refuses at its next cycle; the job starts when every share is acknowledged. A
-- share whose job no longer holds that lease token is stale and removed by its member.
ALTER TABLE runners ADD COLUMN free TEXT;
CREATE TABLE gang_shares (
    job_id       INTEGER NOT NULL,
    runner_id    INTEGER NOT NULL,     -- the member runner (not the launching one)
    lease_token  INTEGER NOT NULL,     -- the attempt it belongs to
    node         TEXT NOT NULL,
    cpus         INTEGER NOT NULL,
    gpus         INTEGER NOT NULL,
    memory_bytes INTEGER NOT NULL,
    acked        INTEGER NOT NULL DEFAULT 0,
    gpu_ids      TEXT,                 -- comma-separated, once acknowledged
    PRIMARY KEY (job_id, runner_id)
) WITHOUT ROWID;
CREATE INDEX gang_shares_by_runner ON gang_shares (runner_id);
