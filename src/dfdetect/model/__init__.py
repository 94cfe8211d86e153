"""The detector: backbones, the detector file, its metadata, named models, cards and export."""
