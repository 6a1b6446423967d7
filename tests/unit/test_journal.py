"""Journal: round trip, tamper detection, torn tail recovery, follower, CLI."""

import json
import math

import numpy as np
import pytest

from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.telemetry.events import EventKind, MessagePayload, MetricPayload, StepPayload
from nx47_pipeline.telemetry.journal import (
    GENESIS,
    JournalFollower,
    JournalSink,
    canonical_json,
    line_hash,
    read_journal,
    verify_journal,
    verify_main,
)


def write_events(path, n=6, *, seq_start=0):
    bus = EventBus(seq_start=seq_start)
    sink = JournalSink(path)
    bus.attach(sink)
    events = []
    for i in range(n):
        if i % 3 == 0:
            events.append(bus.publish(EventKind.STEP, StepPayload(phase="begin", index=i), stage="a"))
        else:
            events.append(bus.publish(EventKind.METRIC,
                                      MetricPayload(name="val_score", value=i / 3, extra={"é": "ü"}),
                                      stage="a"))
    bus.close()
    return events, sink


def lines_of(path):
    return path.read_bytes().split(b"\n")[:-1]


def test_round_trip_and_chain_format(tmp_path):
    path = tmp_path / "journal.jsonl"
    events, sink = write_events(path)
    assert read_journal(path) == events
    res = verify_journal(path)
    assert res.ok and res.n_lines == 6 and not res.torn_tail and res.head == sink.head
    prev = GENESIS
    for raw in lines_of(path):
        obj = json.loads(raw)
        assert obj["prev_hash"] == prev
        h = obj.pop("hash")
        assert h == line_hash(obj)
        prev = h


def test_nan_and_numpy_values_are_journaled_as_plain_json(tmp_path):
    path = tmp_path / "journal.jsonl"
    bus = EventBus()
    bus.attach(JournalSink(path))
    bus.publish(EventKind.METRIC, MetricPayload(name="val_score", value=math.nan,
                                                extra={"n": np.int64(3), "a": np.arange(2)}))
    bus.close()
    text = path.read_text()
    assert "NaN" not in text
    obj = json.loads(text)
    assert obj["payload"]["value"] is None and obj["payload"]["extra"] == {"n": 3, "a": [0, 1]}
    assert verify_journal(path).ok


def test_empty_journal_verifies_with_genesis_head(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"")
    res = verify_journal(path)
    assert res.ok and res.head == GENESIS and res.n_lines == 0


def _rewrite(path, lines):
    path.write_bytes(b"".join(l + b"\n" for l in lines))


def test_edited_line_is_named(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_events(path)
    lines = lines_of(path)
    obj = json.loads(lines[3])
    obj["stage"] = "forged"
    lines[3] = json.dumps(obj).encode()
    _rewrite(path, lines)
    res = verify_journal(path)
    assert not res.ok and res.bad_line == 4 and "edited" in res.reason


def test_edited_line_with_recomputed_hash_breaks_the_next_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_events(path)
    lines = lines_of(path)
    obj = json.loads(lines[2])
    obj.pop("hash")
    obj["payload"]["value"] = 99.0
    obj["hash"] = line_hash(obj)
    lines[2] = canonical_json(obj).encode()
    _rewrite(path, lines)
    res = verify_journal(path)
    assert not res.ok and res.bad_line == 4 and "prev_hash" in res.reason


def test_deleted_line_is_named(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_events(path)
    lines = lines_of(path)
    del lines[2]
    _rewrite(path, lines)
    res = verify_journal(path)
    assert not res.ok and res.bad_line == 3 and "deleted" in res.reason


def test_deleted_first_line_is_named(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_events(path)
    _rewrite(path, lines_of(path)[1:])
    res = verify_journal(path)
    assert not res.ok and res.bad_line == 1 and "genesis" in res.reason


def test_reordered_lines_are_named(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_events(path)
    lines = lines_of(path)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(path, lines)
    res = verify_journal(path)
    assert not res.ok and res.bad_line == 2


def test_garbage_line_is_named(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_events(path)
    lines = lines_of(path)
    lines.insert(4, b"not json")
    _rewrite(path, lines)
    res = verify_journal(path)
    assert not res.ok and res.bad_line == 5 and "JSON" in res.reason


def test_torn_tail_reported_while_rest_verifies(tmp_path):
    path = tmp_path / "journal.jsonl"
    _events, sink = write_events(path)
    full_head = sink.head
    data = path.read_bytes()
    cut = data[: len(data) - 40]  # the crash tore the last line
    path.write_bytes(cut)
    res = verify_journal(path)
    assert res.ok and res.torn_tail and res.n_lines == 5
    assert "line 6 is torn" in res.reason
    assert res.head != full_head
    assert len(read_journal(path)) == 5


def test_complete_last_line_without_newline_is_not_torn(tmp_path):
    path = tmp_path / "journal.jsonl"
    _events, sink = write_events(path)
    path.write_bytes(path.read_bytes()[:-1])
    res = verify_journal(path)
    assert res.ok and not res.torn_tail and res.n_lines == 6 and res.head == sink.head


def test_reopen_continues_chain_and_recovers_torn_tail(tmp_path):
    path = tmp_path / "journal.jsonl"
    events, _ = write_events(path)
    data = path.read_bytes()
    path.write_bytes(data[:-30])
    torn = data[data.rstrip(b"\n").rfind(b"\n") + 1: -30]  # the partial last line
    sink = JournalSink(path)
    assert sink.torn_recovered and sink.last_seq == 4
    assert (tmp_path / "journal.jsonl.torn-1").read_bytes() == torn
    bus = EventBus(seq_start=sink.last_seq + 1)
    bus.attach(sink)
    bus.publish(EventKind.WARNING, MessagePayload(message="resumed"))
    bus.close()
    res = verify_journal(path)
    assert res.ok and not res.torn_tail and res.n_lines == 6
    assert [e.seq for e in read_journal(path)] == [0, 1, 2, 3, 4, 5]


def test_reopen_of_broken_journal_quarantines_it(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_events(path)
    lines = lines_of(path)
    del lines[1]
    _rewrite(path, lines)
    sink = JournalSink(path)
    assert sink.quarantined == tmp_path / "journal.jsonl.bad-1"
    assert sink.last_seq == -1 and sink.head == GENESIS
    sink.close()
    assert not verify_journal(sink.quarantined).ok


def test_follower_returns_complete_lines_only(tmp_path):
    path = tmp_path / "journal.jsonl"
    f = JournalFollower(path)
    assert f.poll() == []  # missing file
    events, _ = write_events(path, n=4)
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # last line still being written
    assert f.poll() == events[:3]
    assert f.poll() == []
    path.write_bytes(data)
    assert f.poll() == events[3:]


def test_follower_after_rerun_cut_torn_tail(tmp_path):
    path = tmp_path / "journal.jsonl"
    events, _ = write_events(path, n=4)
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    f = JournalFollower(path)
    assert f.poll() == events[:3]
    sink = JournalSink(path)  # rerun: cuts the torn line, continues the chain
    bus = EventBus(seq_start=sink.last_seq + 1)
    bus.attach(sink)
    new = bus.publish(EventKind.WARNING, MessagePayload(message="resumed"))
    bus.close()
    assert f.poll() == [new]


def test_verify_main_exit_codes(tmp_path, capsys):
    path = tmp_path / "journal.jsonl"
    _e, sink = write_events(path)
    assert verify_main(str(path)) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"OK 6 events, head {sink.head}"
    path.write_bytes(path.read_bytes()[:-25])
    assert verify_main(str(path)) == 0
    assert "torn" in capsys.readouterr().out
    lines = lines_of(path)
    del lines[0]
    _rewrite(path, lines)
    assert verify_main(str(path)) == 1
    assert capsys.readouterr().err.startswith("BAD line 1:")
    assert verify_main(str(tmp_path / "missing.jsonl")) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_read_journal_names_bad_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    write_events(path, n=2)
    with open(path, "ab") as fh:
        fh.write(b"{}\n")
    with pytest.raises(ValueError, match="line 3"):
        read_journal(path)


def test_undecodable_file_name_does_not_break_the_journal(tmp_path):
    path = tmp_path / "journal.jsonl"
    bus = EventBus()
    sink = JournalSink(path)
    bus.attach(sink)
    name = b"vol\xff.tif".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    bus.publish(EventKind.WARNING, MessagePayload(message="unreadable", subject=name))
    bus.publish(EventKind.WARNING, MessagePayload(message="next"))
    bus.close()
    assert bus.failed_sinks == []
    events = read_journal(path)
    assert events[0].payload.subject == "vol\ufffd.tif" and events[1].payload.message == "next"
    assert verify_journal(path).ok
