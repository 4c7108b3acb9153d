"""Params presets: overlays on params.yaml for real FER2013 (see bench/real_pipeline.py)."""
