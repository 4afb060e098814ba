"""Data: the sources by name, the Pathfinder generator, the run's data configuration, the seeded loaders and
the decoded-once image cache. Below ``train`` (which trains on it); imports nothing of ``train``."""
