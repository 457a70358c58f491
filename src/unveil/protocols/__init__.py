"""Evaluation protocols on a trained run (kNN, linear probe, fine-tune, pixels, the training monitor's own
accuracy) with their feature cache, settings records and untrained baselines. Above the training engine
(the fine-tune trains through it); the building blocks they use are in ``unveil.eval``."""
