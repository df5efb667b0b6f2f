"""Slurm: render sbatch scripts from templates and site configs, submit them, and query the queue."""
