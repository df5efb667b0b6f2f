-- torc_slurm queue schema, version 6: what `workflows status` reads on a million jobs in milliseconds.
--
-- status_counts: jobs per workflow per status, kept exact by a trigger on every status change, so a
-- status report reads ten rows instead of counting the jobs table under the lock. Bulk writes of
-- jobs (add_workflow inserts, `workflows update` inserts and deletes) fire no per-row trigger:
-- they fill or recount the workflow (store.views.refresh_status_counts) in the same transaction.
-- Rows go with their workflow (ON DELETE CASCADE).
CREATE TABLE status_counts (
    workflow_id INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    status      TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, status)
) WITHOUT ROWID;
INSERT INTO status_counts (workflow_id, status, n)
    SELECT workflow_id, status, COUNT(*) FROM jobs GROUP BY workflow_id, status;

-- status_counts_bulk: workflows whose jobs a transaction is rewriting in bulk (initialize, cancel);
-- the trigger skips them and that transaction recounts them at its end (store.views.bulk_status_change).
-- Outside such a transaction the table is empty.
CREATE TABLE status_counts_bulk (
    workflow_id INTEGER PRIMARY KEY
);

CREATE TRIGGER jobs_status_counts AFTER UPDATE OF status ON jobs
WHEN old.status IS NOT new.status
 AND NOT EXISTS (SELECT 1 FROM status_counts_bulk WHERE workflow_id = old.workflow_id)
BEGIN
    UPDATE status_counts SET n = n - 1 WHERE workflow_id = old.workflow_id AND status = old.status;
    INSERT INTO status_counts (workflow_id, status, n) VALUES (new.workflow_id, new.status, 1)
        ON CONFLICT (workflow_id, status) DO UPDATE SET n = n + 1;
END;

-- Resource shapes: a loose index scan finds the distinct (scheduler, nodes, GPUs, memory, runtime,
-- CPUs) of a workflow in one seek each, so "jobs no scheduler / no runner can fit" needs no scan.
-- Status is not in it: claims and outcomes never touch this index.
CREATE INDEX jobs_by_shape ON jobs (workflow_id, scheduler, num_nodes, num_gpus, memory_bytes, runtime_s, num_cpus);
