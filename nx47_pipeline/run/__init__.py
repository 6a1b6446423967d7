"""A run: context, stage functions, preflight, budget, resume, orchestrator.

``run_pipeline(config)`` is the entry point (:mod:`.orchestrator`).
"""

from nx47_pipeline.run.orchestrator import RunResult, run_pipeline

__all__ = ["RunResult", "run_pipeline"]
