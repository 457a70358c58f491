"""What a run leaves on disk, written and read: checkpoints, the resolved config, logs and backbone weights.

The layer below training, evaluation, export and figures, so that each of them can read a run without
importing another (tests/test_layout.py keeps every import pointing down)."""
