"""ipywidgets views over the NX47 telemetry stream."""
