"""Shared libraries of the stages and tools.

I/O, params, data, model, metrics, backbones, overlays, reports, plots, the DVC adapter.
"""
