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
-- Only a change of class matters to any action: not yet ready (uninitialized, blocked) / ready or
-- held (ready, pending, running) / done (finished or disabled). Claims and starts (ready -> pending
-- -> running), most of a cycle's changes, skip it before any lookup.
CREATE TRIGGER jobs_actions AFTER UPDATE OF status ON jobs
WHEN (old.status IN ('ready', 'pending', 'running')) + 2 * (old.status IN ('completed', 'failed', 'canceled',
                                                                            'terminated', 'disabled'))
  != (new.status IN ('ready', 'pending', 'running')) + 2 * (new.status IN ('completed', 'failed', 'canceled',
                                                                            'terminated', 'disabled'))
 AND EXISTS (SELECT 1 FROM actions WHERE workflow_id = new.workflow_id)
 AND NOT EXISTS (SELECT 1 FROM status_counts_bulk WHERE workflow_id = new.workflow_id)
BEGIN
    -- on_jobs_ready / on_jobs_complete: count the job in or out of its actions' trigger state, in
    -- one statement (SET sees the old row, so the new count is written out twice): due when all
    -- matched jobs are in it; re-armed (waiting) when a matched job left it, which only resets,
    -- recover and updates do, so the trigger can happen again (a claim in flight is left alone).
    UPDATE actions SET
        reached = reached + (CASE WHEN trigger = 'on_jobs_ready'
                THEN new.status IN ('ready', 'pending', 'running', 'completed', 'failed', 'canceled', 'terminated',
                                    'disabled')
                ELSE new.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled') END)
            - (CASE WHEN trigger = 'on_jobs_ready'
                THEN old.status IN ('ready', 'pending', 'running', 'completed', 'failed', 'canceled', 'terminated',
                                    'disabled')
                ELSE old.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled') END),
        state = CASE
            WHEN size <= 0 THEN state
            WHEN reached + (CASE WHEN trigger = 'on_jobs_ready'
                    THEN new.status IN ('ready', 'pending', 'running', 'completed', 'failed', 'canceled', 'terminated',
                                        'disabled')
                    ELSE new.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled') END)
                - (CASE WHEN trigger = 'on_jobs_ready'
                    THEN old.status IN ('ready', 'pending', 'running', 'completed', 'failed', 'canceled', 'terminated',
                                        'disabled')
                    ELSE old.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled') END) >= size
                THEN (CASE WHEN state = 'waiting' THEN 'due' ELSE state END)
            ELSE (CASE WHEN state IN ('due', 'done', 'failed', 'skipped') THEN 'waiting' ELSE state END) END
    WHERE id IN (SELECT action_id FROM action_members WHERE job_id = new.id);
    -- on_workflow_complete: due when a job finishes and no job of the workflow is unfinished ...
    UPDATE actions SET state = 'due'
    WHERE new.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled')
      AND workflow_id = new.workflow_id AND trigger = 'on_workflow_complete' AND state = 'waiting'
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE workflow_id = new.workflow_id
                      AND status IN ('uninitialized', 'blocked', 'ready', 'pending', 'running'));
    -- ... and re-armed when a finished job runs again (reset, recover, update).
    UPDATE actions SET state = 'waiting'
    WHERE old.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled')
      AND new.status IN ('uninitialized', 'blocked', 'ready', 'pending', 'running')
      AND workflow_id = new.workflow_id AND trigger = 'on_workflow_complete'
      AND state IN ('due', 'done', 'failed', 'skipped');
END;
