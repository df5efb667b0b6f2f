-- torc_slurm queue schema, version 10: when each allocation ends, as Slurm last said.
--
-- Runners read their end time here instead of each asking Slurm: the first runner of an
-- allocation asks once and records it; `torc slurm status` (one squeue call for all of a
-- workflow's allocations) records changes, such as a limit extended with scontrol.
ALTER TABLE allocations ADD COLUMN end_at REAL;
