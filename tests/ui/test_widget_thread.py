"""The pinned ipykernel / ipywidgets pair sends widget updates made from a
background thread (ipykernel 7.0.x broke this).

A real kernel (started by nbclient) runs cells in which a worker thread
changes widget values; nbclient plays the front end and records every
``comm_msg`` state update it receives.  This is the path every live update
of the dashboard takes: the UI pump is a thread.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]

THREAD_CELL = """
import threading, time
import ipywidgets as W
from IPython.display import display
bar = W.FloatProgress(min=0.0, max=1.0, value=0.0)
display(bar)
def work():
    for i in range(1, 11):
        bar.value = i / 10
        time.sleep(0.03)  # a worker's pace: the updates must be spread in time, not sent in one burst
t = threading.Thread(target=work, name="updater")
t.start()
t.join()
print("MODEL", bar.model_id)
"""

PUMP_CELL = """
import threading, time
import ipywidgets as W
from IPython.display import display
from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.config import RunConfig
from nx47_pipeline.telemetry.events import EventKind, ProgressPayload
from nx47_widgets.pump import UIPump
from nx47_widgets.threaded import ThreadedRunner
bar2 = W.FloatProgress(min=0.0, max=1.0, value=0.0)
display(bar2)
N = 400
def job(config, cancel, sink):
    bus = EventBus()
    bus.attach(sink)
    for i in range(N):
        bus.publish(EventKind.PROGRESS_UPDATE, ProgressPayload(
            step="s", step_index=0, step_count=1, step_done=i + 1, step_total=N,
            global_=(i + 1) / N))
        time.sleep(0.003)  # a run's pace: 400 events over about a second, faster than the pump's 0.1 s
last_synced = threading.Event()
def flush(events, tick):
    prog = [e for e in events if e.kind is EventKind.PROGRESS_UPDATE]
    if prog:
        bar2.value = prog[-1].payload.global_
        if bar2.value == 1.0:
            last_synced.set()
runner = ThreadedRunner(RunConfig(), job=job)
pump = UIPump(runner.drain, flush, interval=0.1).start()
t0 = time.monotonic()
runner.start()
runner.join(60)
last_synced.wait(30)  # the pump thread has flushed the last event
pump.stop()
print("MODEL2", bar2.model_id, "FLUSHES", pump.flushes, "SECONDS", round(time.monotonic() - t0, 2))
"""


class RecordingClient(NotebookClient):
    """nbclient that keeps every widget state update it receives, in order."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.updates: list[tuple[str, dict]] = []

    def handle_comm_msg(self, outs, msg, cell_index):
        data = msg["content"].get("data", {})
        if msg["msg_type"] == "comm_msg" and "state" in data:
            self.updates.append((msg["content"]["comm_id"], dict(data["state"])))
        return super().handle_comm_msg(outs, msg, cell_index)


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")


@pytest.mark.timeout(180)
def test_widget_updates_from_a_thread_reach_the_front_end():
    import ipykernel
    import ipywidgets

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(THREAD_CELL), nbformat.v4.new_code_cell(PUMP_CELL)]
    client = RecordingClient(nb, timeout=120, kernel_name="python3",
                             resources={"metadata": {"path": str(REPO)}})
    client.execute()
    versions = f"ipykernel {ipykernel.__version__}, ipywidgets {ipywidgets.__version__}"

    model = _stdout(nb.cells[0]).split("MODEL", 1)[1].split()[0]
    values = [s["value"] for cid, s in client.updates if cid == model and "value" in s]
    # every value the worker thread set arrived, in order
    assert values == [i / 10 for i in range(1, 11)], versions
    assert client.widget_state[model]["value"] == 1.0

    out = _stdout(nb.cells[1])
    model2 = out.split("MODEL2", 1)[1].split()[0]
    flushes = int(out.split("FLUSHES", 1)[1].split()[0])
    seconds = float(out.split("SECONDS", 1)[1].split()[0])
    values2 = [s["value"] for cid, s in client.updates if cid == model2 and "value" in s]
    assert values2 and values2[-1] == 1.0, versions  # the pump thread's last update arrived
    assert values2 == sorted(values2)
    # 400 events, but at most one widget sync per pump flush (<= ~10 per second)
    assert len(values2) <= flushes <= seconds / 0.1 + 2
    assert len(values2) < 400 / 4
