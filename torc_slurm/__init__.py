"""torc_slurm: a Slurm-native job runner over a shared-filesystem SQLite queue."""

__version__ = "0.1.0"
