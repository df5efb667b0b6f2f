-- torc_slurm queue schema, version 4: the jobs that read a file (or a user data entry) by index,
-- so a restart finds the consumers of a changed input without paging through job_io.
CREATE INDEX job_io_by_item ON job_io (item_id, kind);
