"""Pipeline stages: one module per DVC stage.

`fer <stage>` runs it; the `summary` stage lives in evaluate.py.
"""
