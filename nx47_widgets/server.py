"""The Voila server of ``nx47 serve``: Voila with the dashboard's page life cycle.

``python -m nx47_widgets.server dashboard.ipynb [Voila options]`` is Voila
(0.5) with two additions, so that a page can be closed or reloaded at any
time without leaving a kernel behind and without losing a run:

* :func:`set_xsrf_cookie`, Voila's *prelaunch hook*: it sets the ``_xsrf``
  cookie.  When a page is closed or reloaded, Voila's front end posts
  ``/voila/api/shutdown/<kernel>`` with the value of that cookie; Voila 0.5
  never sets it, so the request was refused (403, "'_xsrf' argument missing")
  and every page load left its kernel running.
* :class:`DashboardKernelManager`: a kernel no page is connected to is shut
  down ``cull_idle_timeout`` seconds after its last page left (checked every
  ``cull_interval`` seconds) — a page that crashed or lost its network sends
  no shutdown request.  A kernel is busy while it runs the notebook, and one
  whose page never connected gets at least ``first_connect_s``, so a page
  still loading is never culled.  The exception: a kernel running a
  *threaded* run (registered in :mod:`nx47_widgets.lifecycle`) is kept, even
  when its page asks for its shutdown, until the run ended; another page
  re-attaches to that run and can stop it.  Stopping the server
  (SIGTERM) shuts every kernel down; a kernel's threaded run then ends
  CANCELLED.

The page (:data:`TEMPLATE`, ``nx47_widgets/voila/templates/nx47``) is
Voila's ``lab`` template without its Font Awesome links to a CDN, so that no
request leaves 127.0.0.1, and with the browser console kept for real
problems (see the template for the JupyterLab version notices it drops).

This module runs in the server process only; kernels never import it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets.config import Config
from voila.app import Voila

from nx47_widgets.lifecycle import threaded_runs_of

__all__ = ["set_xsrf_cookie", "DashboardKernelManager", "voila_config", "main", "TEMPLATE",
           "TEMPLATE_ROOT"]

#: The page template (``nx47_widgets/voila/templates/nx47``).
TEMPLATE = "nx47"
#: A Jupyter data folder holding ``voila/templates/nx47`` (put on ``JUPYTER_PATH``).
TEMPLATE_ROOT = Path(__file__).resolve().parent


def set_xsrf_cookie(req: Any, notebook: Any, cwd: str) -> Any:
    """Voila prelaunch hook: give the page the ``_xsrf`` cookie its unload request sends.

    Parameters
    ----------
    req : tornado.web.RequestHandler
        The page request (reading ``xsrf_token`` sets the cookie on its response).
    notebook : nbformat.NotebookNode
    cwd : str

    Returns
    -------
    nbformat.NotebookNode
        ``notebook``, unchanged.
    """
    _ = req.xsrf_token
    return notebook


class DashboardKernelManager(AsyncMappingKernelManager):
    """Shut down kernels no page is connected to; keep those running a threaded run.

    ``cull_idle_timeout`` is the number of seconds a kernel may stay without
    a connected page (and not busy) before it is shut down.
    """

    #: Seconds a kernel that never had a page connected (a page still loading,
    #: or abandoned while loading) may wait, at least.
    first_connect_s = 30.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._orphan_since: dict[str, float] = {}
        self._was_connected: set[str] = set()
        self._kept: set[str] = set()

    def notify_connect(self, kernel_id: str) -> None:
        """A page connected to the kernel (remembered: its orphan time is short)."""
        super().notify_connect(kernel_id)
        self._was_connected.add(kernel_id)

    def kernel_pid(self, kernel_id: str) -> int | None:
        """The process id of a kernel (None when unknown)."""
        try:
            km = self.get_kernel(kernel_id)
        except KeyError:
            return None
        provisioner = getattr(km, "provisioner", None)
        pid = getattr(provisioner, "pid", None)
        if pid is None:
            pid = getattr(getattr(provisioner, "process", None), "pid", None)
        return int(pid) if pid else None

    def threaded_runs(self, kernel_id: str) -> list[str]:
        """Run folders where the kernel ``kernel_id`` runs a threaded run."""
        return threaded_runs_of(self.kernel_pid(kernel_id))

    async def shutdown_kernel(self, kernel_id: str, now: bool = False,  # type: ignore[override]
                              restart: bool = False) -> Any:
        """Shut a kernel down unless it runs a threaded run (page unload, culling).

        The server's own shutdown (``shutdown_all``) is not affected.
        """
        runs = [] if restart else self.threaded_runs(kernel_id)
        if runs:
            if kernel_id not in self._kept:
                self._kept.add(kernel_id)
                self.log.info("[nx47] kernel %s runs a threaded run in %s: kept after its page "
                              "left, until the run ends", kernel_id, ", ".join(runs))
            return None
        self._orphan_since.pop(kernel_id, None)
        self._was_connected.discard(kernel_id)
        self._kept.discard(kernel_id)
        return await super().shutdown_kernel(kernel_id, now=now, restart=restart)

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        """Shut the kernel down once no page was connected for ``cull_idle_timeout`` s."""
        kernel = self._kernels.get(kernel_id)
        if kernel is None:
            return
        if getattr(kernel, "execution_state", None) == "dead":
            await self.shutdown_kernel(kernel_id)
            return
        now = time.monotonic()
        connected = self._kernel_connections.get(kernel_id, 0) > 0
        busy = getattr(kernel, "execution_state", None) in ("busy", "starting")
        if connected:
            self._was_connected.add(kernel_id)
        if connected or busy:
            self._orphan_since.pop(kernel_id, None)
            return
        since = self._orphan_since.setdefault(kernel_id, now)
        limit = float(self.cull_idle_timeout)
        if kernel_id not in self._was_connected:
            limit = max(limit, self.first_connect_s)
        if now - since < limit - 0.5:  # a check every cull_interval: do not miss one
            return
        if self.threaded_runs(kernel_id):
            await self.shutdown_kernel(kernel_id)  # logs once that it is kept
            return
        self.log.info("[nx47] shutting down kernel %s: no page connected for %.0f s",
                      kernel_id, now - since)
        await self.shutdown_kernel(kernel_id)


def voila_config() -> Config:
    """The configuration :func:`main` gives Voila (command-line options still win)."""
    c = Config()
    c.VoilaConfiguration.prelaunch_hook = set_xsrf_cookie
    c.VoilaConfiguration.multi_kernel_manager_class = DashboardKernelManager
    c.VoilaConfiguration.template = TEMPLATE
    return c


def main(argv: list[str] | None = None) -> int:
    """Run Voila with :func:`voila_config` (``argv``: Voila's command line)."""
    paths = os.environ.get("JUPYTER_PATH", "")
    if str(TEMPLATE_ROOT) not in paths.split(os.pathsep):  # where Voila finds the nx47 template
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(TEMPLATE_ROOT), paths) if p)
    Voila.launch_instance(argv=sys.argv[1:] if argv is None else argv, config=voila_config())
    return 0


if __name__ == "__main__":  # pragma: no cover - the server process
    sys.exit(main())
