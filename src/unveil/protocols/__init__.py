"""Evaluation protocols on a trained run, one file each (knn, linear, finetune, monitor), registered in
``base.PROTOCOLS``; the ``unveil eval`` verbs, a suite's evaluations and the table's columns come from that
registry. ``_shared`` holds what they share (reading a run, the settings record, the feature cache, the
untrained baseline's features). Above the training engine (the fine-tune trains through it); the building
blocks they use are in ``unveil.eval``."""
