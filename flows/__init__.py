"""Prefect entry points: the pipeline flow (`pipeline`) and local scheduling (`serve`).

Deployment definitions live in `prefect.yaml` at the repository root.
"""
