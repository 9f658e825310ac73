"""Content hashes, the run.lock.json lockfile, and `reproduce`."""
