"""``python -m torc_slurm …`` is the ``torc`` command."""

from torc_slurm.cli import main

if __name__ == "__main__":
    main()
