-- torc_slurm queue schema, version 1. One file holds many workflows.
-- Dependency sets: a job waits on one set; equal sets are stored once; a set counts its unfinished
-- members, and a job becomes ready when its set's count reaches zero.

CREATE TABLE workflows (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT,
    user        TEXT,
    project     TEXT,
    spec_source TEXT,
    spec_json   TEXT NOT NULL,
    working_dir TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'uninitialized',   -- uninitialized | initialized | canceled
    created_at  REAL NOT NULL
);

CREATE TABLE dependency_sets (
    id          INTEGER PRIMARY KEY,
    workflow_id INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    size        INTEGER NOT NULL,
    remaining   INTEGER NOT NULL,   -- members not yet finished
    failed      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY,
    workflow_id         INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    command             TEXT NOT NULL,
    invocation_script   TEXT,
    env                 TEXT,           -- JSON object or NULL
    status              TEXT NOT NULL,
    rank                INTEGER NOT NULL,   -- claim order within the workflow
    priority            INTEGER NOT NULL,
    num_cpus            INTEGER NOT NULL,
    num_gpus            INTEGER NOT NULL,
    num_nodes           INTEGER NOT NULL,
    memory_bytes        INTEGER NOT NULL,
    runtime_s           INTEGER NOT NULL,
    resource_requirements TEXT NOT NULL,
    scheduler           TEXT,
    cancel_on_blocking_job_failure INTEGER NOT NULL,
    supports_termination INTEGER NOT NULL,
    depset_id           INTEGER REFERENCES dependency_sets(id),
    attempt             INTEGER NOT NULL DEFAULT 0,
    runner_id           INTEGER,
    return_code         INTEGER,
    UNIQUE (workflow_id, name)
);
CREATE INDEX jobs_by_status ON jobs (workflow_id, status, rank);
CREATE INDEX jobs_by_set ON jobs (depset_id) WHERE depset_id IS NOT NULL;
CREATE INDEX jobs_by_runner ON jobs (runner_id) WHERE runner_id IS NOT NULL;

CREATE TABLE dependency_members (
    job_id INTEGER NOT NULL,
    set_id INTEGER NOT NULL,
    PRIMARY KEY (job_id, set_id)
) WITHOUT ROWID;

CREATE TABLE files (
    id              INTEGER PRIMARY KEY,
    workflow_id     INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    path            TEXT NOT NULL,
    producer_job_id INTEGER,
    UNIQUE (workflow_id, name)
);

CREATE TABLE user_data (
    id              INTEGER PRIMARY KEY,
    workflow_id     INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    data            TEXT,
    is_ephemeral    INTEGER NOT NULL,
    producer_job_id INTEGER,
    UNIQUE (workflow_id, name)
);

CREATE TABLE job_io (
    job_id    INTEGER NOT NULL,
    kind      TEXT NOT NULL,      -- input_file | output_file | input_user_data | output_user_data
    item_id   INTEGER NOT NULL,
    PRIMARY KEY (job_id, kind, item_id)
) WITHOUT ROWID;

CREATE TABLE runners (
    id            INTEGER PRIMARY KEY,
    workflow_id   INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    hostname      TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    slurm_job_id  TEXT,
    scheduler     TEXT,
    resources     TEXT,          -- JSON: cpus, gpus, memory_bytes, end_time
    status        TEXT NOT NULL, -- active | finished | lost
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL,
    ended_at      REAL
);
CREATE INDEX runners_by_heartbeat ON runners (status, heartbeat_at);

CREATE TABLE results (
    id                INTEGER PRIMARY KEY,
    workflow_id       INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    job_id            INTEGER NOT NULL,
    attempt           INTEGER NOT NULL,
    runner_id         INTEGER,
    status            TEXT NOT NULL,  -- completed | failed | terminated | lost | canceled
    return_code       INTEGER,
    signal            INTEGER,
    started_at        REAL,
    ended_at          REAL,
    exec_s            REAL,
    peak_rss_bytes    INTEGER,
    cpu_time_s        REAL,
    avg_cpu_percent   REAL,
    peak_cpu_percent  REAL,
    avg_memory_bytes  INTEGER,
    peak_memory_bytes INTEGER,
    message           TEXT
);
CREATE INDEX results_by_job ON results (workflow_id, job_id, attempt);

CREATE TABLE allocations (
    id           INTEGER PRIMARY KEY,
    workflow_id  INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    slurm_job_id TEXT NOT NULL,
    scheduler    TEXT NOT NULL,
    script_path  TEXT,
    num_nodes    INTEGER NOT NULL,
    state        TEXT NOT NULL,   -- submitted | PENDING | RUNNING | … | gone | canceled
    submitted_at REAL NOT NULL,
    updated_at   REAL NOT NULL
);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    workflow_id INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    at          REAL NOT NULL,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL
);
