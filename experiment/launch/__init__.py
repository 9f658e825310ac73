"""torchrun commands and job scripts (local, Slurm, PBS) and container runs of the same runner."""
