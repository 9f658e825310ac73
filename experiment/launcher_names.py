"""The launcher names, in one place: the folder schema (``launch.launcher``), ``experiment run --launcher``
and the registry (``experiment.launch.launchers``) all read this tuple. No imports, so the schema can."""

LAUNCHER_NAMES = ("local", "container", "slurm", "pbs")
CLUSTER_LAUNCHERS = ("slurm", "pbs")
