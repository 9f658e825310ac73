"""The real Slurm the cluster tests submit to (experiment/launch/slurm_local.py), once per session: this host
as partition `debug` (the single-node tests) and a virtual cluster of $MIDTRAIN_SLURM_NODES nodes (default 2,
up to 4), each its own network namespace, hostname and /etc/hosts, as partition `nodes` (the multi-node tests).
One slurmctld serves both; the tests run one after the other, so the cores the partitions share are never
asked for twice at once."""

# The fixtures `slurm` and `cluster` live in tests/conftest.py (the container tests run on the same cluster).
