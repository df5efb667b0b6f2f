-- torc_slurm queue schema, version 9: what Slurm said about its partitions, and the lease of the
-- one `torc slurm watch` that may submit for a workflow.
--
-- partition_cache: the partitions and nodes as read from Slurm (scontrol/sinfo), per workflow, kept
-- for the workflow's life (refreshed on request); data is JSON.
CREATE TABLE partition_cache (
    workflow_id INTEGER PRIMARY KEY REFERENCES workflows(id) ON DELETE CASCADE,
    source      TEXT NOT NULL,        -- 'slurm' | 'site config <name>'
    fetched_at  REAL NOT NULL,
    data        TEXT NOT NULL
);
-- watchers: at most one live watcher per workflow. A watcher renews its lease every interval
-- (lease_seq + 1); another may take over only after the lease went unrenewed for its timeout,
-- measured on the newcomer's own clock (as runners age each other's leases).
CREATE TABLE watchers (
    workflow_id  INTEGER PRIMARY KEY REFERENCES workflows(id) ON DELETE CASCADE,
    holder       TEXT NOT NULL,       -- host:pid:random
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    lease_seq    INTEGER NOT NULL DEFAULT 0,
    timeout_s    REAL NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    state        TEXT                 -- JSON: per-scheduler failures, pauses (for `status`)
);
