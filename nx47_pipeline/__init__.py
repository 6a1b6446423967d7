"""NX47 pipeline: Vesuvius surface segmentation with live telemetry.

This package never imports ``nx47_widgets`` or ipywidgets; torch is imported
lazily by the U-Net stage only.
"""

__version__ = "0.1.0"
