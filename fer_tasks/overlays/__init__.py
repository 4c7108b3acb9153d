"""Shipped params overlays (fer_tasks/lib/overlay.py).

The real-FER2013 presets and the write-up's five configurations.
"""
