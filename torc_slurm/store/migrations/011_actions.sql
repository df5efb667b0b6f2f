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

-- One index probe per status change of a job no action watches; bulk rewrites (initialize,
-- cancel) are skipped like status_counts and recounted by store/actions.recount.
CREATE TRIGGER jobs_action_counts AFTER UPDATE OF status ON jobs
WHEN old.status IS NOT new.status
 AND EXISTS (SELECT 1 FROM action_members WHERE job_id = new.id)
 AND NOT EXISTS (SELECT 1 FROM status_counts_bulk WHERE workflow_id = new.workflow_id)
BEGIN
    UPDATE actions SET reached = reached
        + (CASE WHEN trigger = 'on_jobs_ready'
                THEN new.status IN ('ready', 'pending', 'running', 'completed', 'failed', 'canceled', 'terminated',
                                    'disabled')
                ELSE new.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled') END)
        - (CASE WHEN trigger = 'on_jobs_ready'
                THEN old.status IN ('ready', 'pending', 'running', 'completed', 'failed', 'canceled', 'terminated',
                                    'disabled')
                ELSE old.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled') END)
    WHERE id IN (SELECT action_id FROM action_members WHERE job_id = new.id);
    UPDATE actions SET state = 'due'
    WHERE id IN (SELECT action_id FROM action_members WHERE job_id = new.id)
      AND state = 'waiting' AND size > 0 AND reached >= size;
    -- A matched job left the trigger's state (only resets, recover and updates do that): the
    -- trigger can happen again, so the action is re-armed (a claim in flight is left alone).
    UPDATE actions SET state = 'waiting'
    WHERE id IN (SELECT action_id FROM action_members WHERE job_id = new.id)
      AND state IN ('due', 'done', 'failed', 'skipped') AND reached < size;
END;

-- on_workflow_complete: when a job finishes and no job of its workflow is unfinished any more.
CREATE TRIGGER jobs_workflow_complete_action AFTER UPDATE OF status ON jobs
WHEN old.status IS NOT new.status
 AND new.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled')
 AND EXISTS (SELECT 1 FROM actions WHERE workflow_id = new.workflow_id AND trigger = 'on_workflow_complete'
             AND state = 'waiting')
 AND NOT EXISTS (SELECT 1 FROM status_counts_bulk WHERE workflow_id = new.workflow_id)
BEGIN
    UPDATE actions SET state = 'due'
    WHERE workflow_id = new.workflow_id AND trigger = 'on_workflow_complete' AND state = 'waiting'
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE workflow_id = new.workflow_id
                      AND status IN ('uninitialized', 'blocked', 'ready', 'pending', 'running'));
END;

-- A finished job runs again (reset, recover, update): the workflow will complete again, and its
-- on_workflow_complete actions happen again then.
CREATE TRIGGER jobs_workflow_complete_rearm AFTER UPDATE OF status ON jobs
WHEN old.status IN ('completed', 'failed', 'canceled', 'terminated', 'disabled')
 AND new.status IN ('uninitialized', 'blocked', 'ready', 'pending', 'running')
 AND EXISTS (SELECT 1 FROM actions WHERE workflow_id = new.workflow_id AND trigger = 'on_workflow_complete'
             AND state IN ('due', 'done', 'failed', 'skipped'))
 AND NOT EXISTS (SELECT 1 FROM status_counts_bulk WHERE workflow_id = new.workflow_id)
BEGIN
    UPDATE actions SET state = 'waiting'
    WHERE workflow_id = new.workflow_id AND trigger = 'on_workflow_complete'
      AND state IN ('due', 'done', 'failed', 'skipped');
END;
