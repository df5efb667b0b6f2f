-- torc_slurm queue schema, version 11: torc's workflow actions, performed exactly once per trigger.
--
-- actions: one row per spec entry (idx = its place in the spec's `actions` list). state:
--   waiting  the trigger has not happened yet
--   due      it happened (set in the transaction that observed it); the next observer that can
--            perform the action claims it
--   claimed  claim_token names the one claim; claimed_by/claim_runner/claim_host_key/claim_pid say
--            who holds it; lease_at is renewed by a claimant that is not a runner (whose own lease
--            covers the claim). Another observer takes the claim over only when the claimant is
--            dead (see store/actions.py).
--   done | failed   performed (result: JSON with what happened, the sbatch ids …); re-armed to
--            waiting when the trigger's condition stops holding (a matched job reset), so it
--            happens once more each time the condition comes true again
--   skipped  not applicable where it came due (e.g. scheduler_type local)
--   per_runner  on_worker_start / on_worker_complete: each runner performs it itself
-- size/reached: for on_jobs_ready / on_jobs_complete, the matched jobs and how many of them are in
-- the trigger's state (ready or later / finished), kept exact by the trigger below in both
-- directions, so checking a trigger never scans the jobs.
CREATE TABLE actions (
    id             INTEGER PRIMARY KEY,
    workflow_id    INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    idx            INTEGER NOT NULL,
    trigger        TEXT NOT NULL,
    type           TEXT NOT NULL,
    config         TEXT NOT NULL,
    size           INTEGER NOT NULL DEFAULT 0,
    reached        INTEGER NOT NULL DEFAULT 0,
    state          TEXT NOT NULL DEFAULT 'waiting',
    claimed_by     TEXT,
    claim_runner   INTEGER,
    claim_host_key TEXT,
    claim_pid      INTEGER,
    claim_pid_started REAL,
    claim_token    INTEGER,
    claimed_at     REAL,
    lease_at       REAL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    result         TEXT,
    updated_at     REAL,
    UNIQUE (workflow_id, idx)
);
INSERT INTO sequences (name, next) VALUES ('actions', 1), ('action_token', 1);
CREATE INDEX actions_open ON actions (workflow_id, state) WHERE state IN ('due', 'claimed');
CREATE INDEX actions_by_trigger ON actions (workflow_id, trigger, state);

-- Which jobs a job trigger watches (resolved by the compiler from jobs / job_name_regexes).
CREATE TABLE action_members (
    job_id    INTEGER NOT NULL,
    action_id INTEGER NOT NULL,
    PRIMARY KEY (job_id, action_id)
) WITHOUT ROWID;
CREATE INDEX action_members_by_action ON action_members (action_id);

-- ONE trigger for all of it (each trigger costs a few microseconds per row even when its WHEN
-- is false): for a workflow without actions, at most one index probe per status change; bulk rewrites
-- (initialize, cancel) are skipped like status_counts and recounted by store/actions.recount.
-- Only a change of class matters to any action: 0 not yet ready (uninitialized, blocked), 1 ready
-- or held (ready, pending, running), 2 done (finished or disabled). Claims and starts (ready ->
-- pending -> running), most of a cycle's changes, skip it before any lookup.
-- No `x IN ('a', 'b', …)` lists here: SQLite 3.40 builds an ephemeral index for each one every time
-- a trigger program evaluates it (about 0.2 ms a row, which made initialize 40x slower); CASE and
-- plain comparisons cost nothing like it.
CREATE TRIGGER jobs_actions AFTER UPDATE OF status ON jobs
WHEN (CASE old.status WHEN 'uninitialized' THEN 0 WHEN 'blocked' THEN 0 WHEN 'ready' THEN 1 WHEN 'pending' THEN 1
                      WHEN 'running' THEN 1 ELSE 2 END)
  != (CASE new.status WHEN 'uninitialized' THEN 0 WHEN 'blocked' THEN 0 WHEN 'ready' THEN 1 WHEN 'pending' THEN 1
                      WHEN 'running' THEN 1 ELSE 2 END)
 AND EXISTS (SELECT 1 FROM actions WHERE workflow_id = new.workflow_id)
 AND NOT EXISTS (SELECT 1 FROM status_counts_bulk WHERE workflow_id = new.workflow_id)
BEGIN
    -- on_jobs_ready / on_jobs_complete: count the job in or out of its actions' trigger state
    -- (on_jobs_ready: class 1 or 2; on_jobs_complete: class 2), in one statement (SET sees the old
    -- row, so the new count is written out twice): due when all matched jobs are in it; re-armed
    -- (waiting) when a matched job left it, which only resets, recover and updates do, so the
    -- trigger can happen again (a claim in flight is left alone).
    UPDATE actions SET
        reached = reached
            + (CASE new.status WHEN 'uninitialized' THEN 0 WHEN 'blocked' THEN 0
                   WHEN 'ready' THEN trigger = 'on_jobs_ready' WHEN 'pending' THEN trigger = 'on_jobs_ready'
                   WHEN 'running' THEN trigger = 'on_jobs_ready' ELSE 1 END)
            - (CASE old.status WHEN 'uninitialized' THEN 0 WHEN 'blocked' THEN 0
                   WHEN 'ready' THEN trigger = 'on_jobs_ready' WHEN 'pending' THEN trigger = 'on_jobs_ready'
                   WHEN 'running' THEN trigger = 'on_jobs_ready' ELSE 1 END),
        state = CASE
            WHEN size <= 0 THEN state
            WHEN reached
                + (CASE new.status WHEN 'uninitialized' THEN 0 WHEN 'blocked' THEN 0
                       WHEN 'ready' THEN trigger = 'on_jobs_ready' WHEN 'pending' THEN trigger = 'on_jobs_ready'
                       WHEN 'running' THEN trigger = 'on_jobs_ready' ELSE 1 END)
                - (CASE old.status WHEN 'uninitialized' THEN 0 WHEN 'blocked' THEN 0
                       WHEN 'ready' THEN trigger = 'on_jobs_ready' WHEN 'pending' THEN trigger = 'on_jobs_ready'
                       WHEN 'running' THEN trigger = 'on_jobs_ready' ELSE 1 END) >= size
                THEN (CASE state WHEN 'waiting' THEN 'due' ELSE state END)
            ELSE (CASE state WHEN 'due' THEN 'waiting' WHEN 'done' THEN 'waiting' WHEN 'failed' THEN 'waiting'
                             WHEN 'skipped' THEN 'waiting' ELSE state END) END
    WHERE workflow_id = new.workflow_id AND (trigger = 'on_jobs_ready' OR trigger = 'on_jobs_complete')
      AND EXISTS (SELECT 1 FROM action_members WHERE job_id = new.id AND action_id = actions.id);
    -- on_workflow_complete: due when a job finishes and no job of the workflow is unfinished ...
    UPDATE actions SET state = 'due'
    WHERE workflow_id = new.workflow_id AND trigger = 'on_workflow_complete' AND state = 'waiting'
      AND (CASE new.status WHEN 'uninitialized' THEN 0 WHEN 'blocked' THEN 0 WHEN 'ready' THEN 0
                           WHEN 'pending' THEN 0 WHEN 'running' THEN 0 ELSE 1 END)
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE workflow_id = new.workflow_id AND status = 'uninitialized')
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE workflow_id = new.workflow_id AND status = 'blocked')
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE workflow_id = new.workflow_id AND status = 'ready')
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE workflow_id = new.workflow_id AND status = 'pending')
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE workflow_id = new.workflow_id AND status = 'running');
    -- ... and re-armed when a finished job runs again (reset, recover, update).
    UPDATE actions SET state = 'waiting'
    WHERE workflow_id = new.workflow_id AND trigger = 'on_workflow_complete'
      AND (state = 'due' OR state = 'done' OR state = 'failed' OR state = 'skipped')
      AND (CASE old.status WHEN 'uninitialized' THEN 0 WHEN 'blocked' THEN 0 WHEN 'ready' THEN 0
                           WHEN 'pending' THEN 0 WHEN 'running' THEN 0 ELSE 1 END)
      AND (CASE new.status WHEN 'uninitialized' THEN 1 WHEN 'blocked' THEN 1 WHEN 'ready' THEN 1
                           WHEN 'pending' THEN 1 WHEN 'running' THEN 1 ELSE 0 END);
END;
