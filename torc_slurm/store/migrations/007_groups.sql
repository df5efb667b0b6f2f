-- torc_slurm queue schema, version 7: groups of jobs that start together, multi-node launchers,
-- container images.
--
-- job_groups: one row per group. A group's members are claimed by one cycle or not at all; when
-- group_end is 'lead', the lead's exit ends the others (recorded with reason terminated_by_lead).
CREATE TABLE job_groups (
    id          INTEGER PRIMARY KEY,
    workflow_id INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    lead_job_id INTEGER,
    group_end   TEXT NOT NULL,      -- lead | all
    size        INTEGER NOT NULL,
    UNIQUE (workflow_id, name)
);
INSERT INTO sequences (name, next) VALUES ('job_groups', 1);
ALTER TABLE jobs ADD COLUMN group_id INTEGER;
ALTER TABLE jobs ADD COLUMN group_rank INTEGER;   -- 0-based, spec order
ALTER TABLE jobs ADD COLUMN launcher TEXT;        -- multi-node: srun (NULL) or none
ALTER TABLE jobs ADD COLUMN image TEXT;
CREATE INDEX jobs_by_group ON jobs (group_id, group_rank) WHERE group_id IS NOT NULL;
