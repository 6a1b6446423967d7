"""What ``dashboard.ipynb`` needs besides the dashboard: its parameters as a
RunConfig, headless detection, and the headless run.

``run_headless(config)`` is what the notebook calls when executed headless
(papermill / nbclient, Kaggle commit runs); when it is shown (Voila, Jupyter,
the Kaggle editor) it calls :func:`nx47_widgets.app.build_dashboard`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs

from nx47_pipeline.config import RunConfig
from nx47_pipeline.io.run_folder import SUBMISSION, RunFolder
from nx47_pipeline.run.orchestrator import run_pipeline

__all__ = ["run_headless", "should_autorun", "is_headless", "config_from_parameters",
           "page_query", "served_by_voila"]

#: Environment variables that show an interactive front end is attached.
_INTERACTIVE_ENV = ("VOILA_KERNEL_ID", "VOILA_SERVER_URL", "VOILA_APP_PORT",
                    "JPY_SESSION_NAME", "VSCODE_PID", "COLAB_RELEASE_TAG")

#: Values of ``NX47_AUTO_RUN`` that force a headless run / an interactive one.
_YES = ("1", "true", "yes", "on")
_NO = ("0", "false", "no", "off")

#: Where a Kaggle notebook writes when no output folder is given.
_KAGGLE_WORKING = Path("/kaggle/working")


def is_headless(environ: Mapping[str, str] | None = None) -> bool:
    """Guess whether nobody can click: True for papermill / nbclient runs.

    Rules, first match wins: ``NX47_AUTO_RUN`` (1/0) decides;
    ``KAGGLE_KERNEL_RUN_TYPE=Batch`` (a Kaggle commit run) is headless, any
    other value (``Interactive``) is not; a Voila kernel, a Jupyter server
    session (``JPY_SESSION_NAME``), VS Code or Colab is interactive; anything
    else (papermill, nbclient, ``jupyter nbconvert --execute``) is headless.

    Parameters
    ----------
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    bool
    """
    env = os.environ if environ is None else environ
    forced = env.get("NX47_AUTO_RUN", "").strip().lower()
    if forced in _YES:
        return True
    if forced in _NO:
        return False
    kaggle = env.get("KAGGLE_KERNEL_RUN_TYPE", "").strip()
    if kaggle:
        return kaggle.lower() == "batch"
    if any(env.get(name) for name in _INTERACTIVE_ENV):
        return False
    return True


def served_by_voila(environ: Mapping[str, str] | None = None) -> bool:
    """True in a kernel Voila started for a page (it sets ``VOILA_*`` variables)."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in ("VOILA_KERNEL_ID", "VOILA_SERVER_URL",
                                          "VOILA_REQUEST_URL", "VOILA_APP_PORT"))


def page_query(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The page address's query (``?out=<run folder>``) as Voila hands it to the kernel.

    Voila puts the query string of the page request in the kernel's
    ``QUERY_STRING``; outside Voila it is empty.

    Parameters
    ----------
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    dict of str to str
        The last value of each parameter.
    """
    env = os.environ if environ is None else environ
    if not served_by_voila(env):
        return {}
    parsed = parse_qs(env.get("QUERY_STRING", ""), keep_blank_values=False)
    return {k: v[-1] for k, v in parsed.items() if v}


def should_autorun(auto_run: bool | None = None,
                   environ: Mapping[str, str] | None = None) -> bool:
    """Whether the notebook starts the run by itself.

    Parameters
    ----------
    auto_run : bool or None
        The notebook's ``AUTO_RUN`` parameter; None: :func:`is_headless`.
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    bool
    """
    if auto_run is not None:
        return bool(auto_run)
    return is_headless(environ)


def config_from_parameters(*, data_root: str | None = None, out_dir: str | None = None,
                           max_train_volumes: int | None = None,
                           max_val_volumes: int | None = None, budget_s: float | None = None,
                           use_unet: bool | None = None, model_dir: str | None = None,
                           model_kind: str | None = None, scheduler: str | None = None, workers: int | None = None,
                           environ: Mapping[str, str] | None = None) -> RunConfig:
    """The RunConfig of the notebook's ``parameters`` cell.

    A parameter left at None falls back to its ``NX47_*`` environment
    variable, then to the RunConfig default (``use_unet=None`` too: it does
    not override ``NX47_USE_UNET``).  Without ``out_dir`` / ``NX47_OUT_DIR``,
    a Kaggle notebook writes to ``/kaggle/working``.

    Parameters
    ----------
    data_root, out_dir : str, optional
        ``DATA_ROOT``, ``OUT_DIR``.
    max_train_volumes, max_val_volumes : int, optional
        ``MAX_TRAIN_VOLUMES``, ``MAX_VAL_VOLUMES`` (0 = all).
    budget_s : float, optional
        ``BUDGET_S``.
    use_unet : bool, optional
        ``USE_UNET``.
    model_dir : str, optional
        ``MODEL_DIR``: a model bundle; the run segments with it and trains
        nothing (``NX47_MODEL_DIR``).
    model_kind : str, optional
        ``MODEL_KIND``: ``"linear"`` (the default) or ``"nnunet"`` (nnU-Net
        v2 trained in the run; ``NX47_MODEL_KIND``).
    scheduler : str, optional
        ``SCHEDULER``: ``"local"`` or a Dask scheduler address; per-volume
        work runs as Dask tasks (``NX47_SCHEDULER``; default in process).
    workers : int, optional
        ``WORKERS``: worker processes of a local cluster, or the workers to
        wait for at an address (``NX47_WORKERS``; default 2).
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    RunConfig

    Raises
    ------
    ValueError
        For a value RunConfig refuses (the message names the field).
    """
    env = os.environ if environ is None else environ
    overrides: dict[str, Any] = dict(
        data_root=data_root, out_dir=out_dir, max_train_volumes=max_train_volumes,
        max_val_volumes=max_val_volumes, budget_s=budget_s, model_dir=model_dir, model_kind=model_kind,
        scheduler=scheduler, workers=workers)
    if use_unet is not None:
        overrides["use_unet"] = bool(use_unet)
    if out_dir is None and not env.get("NX47_OUT_DIR") and _KAGGLE_WORKING.is_dir():
        overrides["out_dir"] = str(_KAGGLE_WORKING)
    return RunConfig.from_env(env, **overrides)


def run_headless(config: RunConfig, *, stream=None) -> Any:
    """Run the pipeline in this thread, printing progress lines; block until it ends.

    Parameters
    ----------
    config : RunConfig
        The run.
    stream : text stream, optional
        Where progress lines go (default ``sys.stdout``, i.e. the notebook
        output that papermill saves).

    Returns
    -------
    RunResult
        From :func:`nx47_pipeline.run.orchestrator.run_pipeline`.

    Raises
    ------
    RuntimeError
        When the run left no ``submission.zip`` (the notebook run then fails
        visibly instead of looking successful).
    """
    stream = sys.stdout if stream is None else stream
    print(f"[nx47] headless run: data={config.data_root} out={config.out_dir} "
          f"max_train={config.max_train_volumes} max_val={config.max_val_volumes} "
          f"budget={config.budget_s:.0f}s", file=stream, flush=True)
    result = run_pipeline(config, console_stream=stream)
    print(f"[nx47] finished: status={result.status} submission={result.submission}",
          file=stream, flush=True)
    if result.submission is None:
        raise RuntimeError(f"the run in {config.out_dir} ended with status {result.status!r} "
                           f"and no {SUBMISSION} (see {RunFolder(config.out_dir).journal})")
    return result
