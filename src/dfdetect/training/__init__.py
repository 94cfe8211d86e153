"""Fitting a detector: the trainer, its policies, distributed helpers and the feature cache."""
