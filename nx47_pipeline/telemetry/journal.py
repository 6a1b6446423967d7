"""Hash-chained ``journal.jsonl``: the durable, verifiable record of a run.

Each line is one JSON object: the event's fields (:meth:`Event.to_dict`) plus
``prev_hash`` (the ``hash`` of the previous line, :data:`GENESIS` for the
first) and ``hash`` = SHA-256 hex of the canonical JSON encoding
(``sort_keys=True, separators=(",", ":"), ensure_ascii=False``, UTF-8) of the
object without ``hash``.  Editing, deleting, inserting or reordering a line
breaks the chain at that line; :func:`verify_journal` names it.

A crash can leave a torn (incomplete) last line.  :func:`verify_journal`
reports it separately (the rest still verifies), :func:`read_journal` and
:class:`JournalFollower` ignore it, and :class:`JournalSink` moves it to
``journal.jsonl.torn-<n>`` before continuing the chain on a rerun.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nx47_pipeline.telemetry.events import Event

__all__ = [
    "GENESIS",
    "JournalSink",
    "open_journal",
    "VerifyResult",
    "verify_journal",
    "read_journal",
    "JournalFollower",
    "verify_main",
    "canonical_json",
    "line_hash",
]

GENESIS = "0" * 64


# ----------------------------------------------------------------------
# Canonical encoding
# ----------------------------------------------------------------------
def _default(obj: Any) -> Any:
    # numpy scalars / arrays, paths, enums, sets, dataclasses
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"value of type {type(obj).__name__} is not JSON serialisable: {obj!r:.80}")


def _sanitize(obj: Any) -> Any:
    """Replace non-finite floats by None (JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    try:
        converted = _default(obj)
    except TypeError:
        return obj
    return _sanitize(converted) if converted is not obj else obj


def _fix_strings(obj: Any) -> Any:
    """Replace characters UTF-8 cannot encode (lone surrogates) by U+FFFD."""
    if isinstance(obj, str):
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in obj)
    if isinstance(obj, dict):
        return {_fix_strings(str(k)): _fix_strings(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_fix_strings(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of ``obj`` (sorted keys, no spaces, UTF-8 as is).

    Non-finite floats become ``null``; numpy scalars and arrays, paths and
    enums are converted to plain JSON values.
    """
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
            allow_nan=False, default=_default,
        )
    except ValueError:  # NaN / Infinity somewhere
        return json.dumps(
            _sanitize(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
            allow_nan=False, default=_default,
        )


def line_hash(obj_without_hash: dict) -> str:
    """SHA-256 hex of the canonical encoding of a journal object without ``hash``."""
    return hashlib.sha256(canonical_json(obj_without_hash).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------
@dataclass
class VerifyResult:
    """Outcome of :func:`verify_journal`.

    Attributes
    ----------
    ok : bool
        True when every complete line verifies (a torn last line is allowed).
    head : str or None
        ``hash`` of the last good line (:data:`GENESIS` for an empty
        journal); None when the journal is bad.
    n_lines : int
        Number of complete lines that verified.
    bad_line : int or None
        1-based number of the first bad line.
    reason : str
        What is wrong (or, for a torn tail, which line is torn).
    torn_tail : bool
        True when the last line is incomplete (crash while writing).
    last_seq : int
        ``seq`` of the last good line (-1 if none).
    """

    ok: bool
    head: str | None
    n_lines: int
    bad_line: int | None = None
    reason: str = ""
    torn_tail: bool = False
    last_seq: int = -1


def _check_line(raw: bytes, prev: str, lineno: int) -> tuple[dict | None, str]:
    """Parse and check one line; return (object, "") or (None, reason)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    if "hash" not in obj or "prev_hash" not in obj:
        return None, "missing hash or prev_hash"
    claimed = obj.pop("hash")
    if obj["prev_hash"] != prev:
        what = "the genesis hash" if lineno == 1 else f"the hash of line {lineno - 1}"
        return None, (
            f"prev_hash does not match {what} "
            "(a line was deleted, inserted or reordered)"
        )
    actual = line_hash(obj)
    if actual != claimed:
        return None, "hash does not match the line's content (the line was edited)"
    obj["hash"] = claimed
    return obj, ""


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without newline) and the unterminated tail (may be b"")."""
    parts = data.split(b"\n")
    return parts[:-1], parts[-1]


def _verify_bytes(data: bytes) -> VerifyResult:
    lines, tail = _split_lines(data)
    prev = GENESIS
    last_seq = -1
    for i, raw in enumerate(lines, start=1):
        obj, reason = _check_line(raw, prev, i)
        if obj is None:
            return VerifyResult(ok=False, head=None, n_lines=i - 1, bad_line=i, reason=reason,
                                last_seq=last_seq)
        prev = obj["hash"]
        last_seq = int(obj.get("seq", last_seq))
    n = len(lines)
    if tail.strip():
        # A last line without its newline: complete if it verifies, else torn.
        obj, reason = _check_line(tail, prev, n + 1)
        if obj is not None:
            return VerifyResult(ok=True, head=obj["hash"], n_lines=n + 1,
                                last_seq=int(obj.get("seq", last_seq)))
        return VerifyResult(
            ok=True, head=prev, n_lines=n, bad_line=None, torn_tail=True,
            reason=f"line {n + 1} is torn (incomplete last line, {len(tail)} bytes: "
            f"{reason}); the {n} lines before it verify",
            last_seq=last_seq,
        )
    return VerifyResult(ok=True, head=prev, n_lines=n, last_seq=last_seq)


def verify_journal(path: str | os.PathLike) -> VerifyResult:
    """Verify the hash chain of the journal at ``path``.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    data = Path(path).read_bytes()
    return _verify_bytes(data)


def _event_from_obj(obj: dict) -> Event:
    body = {k: v for k, v in obj.items() if k not in ("hash", "prev_hash")}
    return Event.from_dict(body)


def read_journal(path: str | os.PathLike) -> list[Event]:
    """All events of the journal at ``path`` (a torn last line is ignored).

    The chain is not verified here (use :func:`verify_journal`).

    Raises
    ------
    ValueError
        If a complete line is not a valid event (names file and line).
    """
    path = Path(path)
    lines, _tail = _split_lines(path.read_bytes())
    events = []
    for i, raw in enumerate(lines, start=1):
        try:
            events.append(_event_from_obj(json.loads(raw.decode("utf-8"))))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: line {i} is not a valid event: {exc}") from None
    return events


# ----------------------------------------------------------------------
# Sink
# ----------------------------------------------------------------------
class JournalSink:
    """Append events to a hash-chained journal, one flushed line per event.

    Opening an existing journal re-verifies it and continues its chain.  A
    torn last line is moved to ``<name>.torn-<n>`` and cut off
    (``torn_recovered``).  A journal whose chain is broken cannot be
    continued: it is renamed to ``<name>.bad-<n>`` (``quarantined``) and a new
    chain starts, so a rerun never fails because of an old journal.

    Parameters
    ----------
    path : str or path-like
        The journal file (created with its folder if missing).
    fsync : bool
        ``os.fsync`` after every line (durable against power loss, slower).
        Lines are always flushed to the OS, which survives a killed process.
    """

    name = "journal"

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = bool(fsync)
        self._lock = threading.Lock()
        self.torn_recovered = False
        self.torn_copy: Path | None = None
        self.quarantined: Path | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._head = GENESIS
        self._last_seq = -1
        self._n_lines = 0
        if self.path.exists():
            self._recover()
        self._fh = open(self.path, "ab")

    def _free_name(self, suffix: str) -> Path:
        n = 1
        while True:
            cand = self.path.with_name(f"{self.path.name}.{suffix}-{n}")
            if not cand.exists():
                return cand
            n += 1

    def _recover(self) -> None:
        data = self.path.read_bytes()
        res = _verify_bytes(data)
        if not res.ok:
            self.quarantined = self._free_name("bad")
            os.replace(self.path, self.quarantined)
            return
        if res.torn_tail:
            cut = data.rfind(b"\n") + 1
            self.torn_copy = self._free_name("torn")
            self.torn_copy.write_bytes(data[cut:])
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
            self.torn_recovered = True
        elif data and not data.endswith(b"\n"):
            with open(self.path, "ab") as fh:  # complete last line lacking "\n"
                fh.write(b"\n")
        self._head = res.head or GENESIS
        self._last_seq = res.last_seq
        self._n_lines = res.n_lines

    @property
    def head(self) -> str:
        """Hash of the last line written (:data:`GENESIS` if none)."""
        return self._head

    @property
    def last_seq(self) -> int:
        """``seq`` of the last line (-1 if the journal is empty)."""
        return self._last_seq

    @property
    def n_lines(self) -> int:
        return self._n_lines

    def handle(self, event: Event) -> None:
        obj = event.to_dict()
        with self._lock:
            obj["prev_hash"] = self._head
            body = canonical_json(obj)
            try:
                raw = body.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates (undecodable file names)
                body = canonical_json(_fix_strings(obj))
                raw = body.encode("utf-8")
            digest = hashlib.sha256(raw).hexdigest()
            line = raw[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}\n'
            self._fh.write(line)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
            self._head = digest
            self._last_seq = event.seq
            self._n_lines += 1

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                try:
                    os.fsync(self._fh.fileno())
                except OSError:
                    pass
                self._fh.close()


def open_journal(path: Path, *, fsync: bool) -> tuple[JournalSink | None, list[tuple[str, str]], str]:
    """Open (continue) the journal at ``path`` for a run.

    Parameters
    ----------
    path : Path
    fsync : bool
        See :class:`JournalSink`.

    Returns
    -------
    tuple
        (the journal, or None when it could not be opened; the (code,
        message) of each repair to report as a WARNING; the text of the
        ERROR to report when it could not be opened, else "").
    """
    try:
        journal = JournalSink(path, fsync=fsync)
    except OSError as exc:  # the run goes on without a journal
        return None, [], f"cannot open the journal {path}: {exc}"
    problems = []
    if journal.torn_recovered:
        problems.append((
            "journal_torn_tail",
            f"the journal's last line was torn by an earlier crash; it was kept in "
            f"{journal.torn_copy} and the chain continues",
        ))
    if journal.quarantined is not None:
        problems.append((
            "journal_bad_chain",
            f"the existing journal failed verification and was moved to "
            f"{journal.quarantined}; a new chain starts",
        ))
    return journal, problems, ""


# ----------------------------------------------------------------------
# Follower
# ----------------------------------------------------------------------
class JournalFollower:
    """Incrementally read a journal that another process (or thread) writes.

    ``poll()`` returns the events of the complete lines added since the last
    poll; a partial last line is held back until its newline arrives.  A
    missing file gives ``[]``.  If the file shrinks or is replaced (a rerun
    cut a torn line or quarantined a bad journal), reading restarts at the
    beginning of the new file, skipping events already returned.
    Lines that are not valid events are counted in ``bad_lines`` and skipped.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._offset = 0
        self._ino: int | None = None
        self._buf = b""
        self._last_seq = -1
        self.bad_lines = 0

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def poll(self) -> list[Event]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        restarted = False
        if self._ino is not None and st.st_ino != self._ino:
            # replaced by a new file (new chain): everything in it is new
            self._offset, self._buf, self._last_seq = 0, b"", -1
        elif st.st_size < self._offset:
            # cut in place: re-read, skipping events already returned
            self._offset, self._buf, restarted = 0, b"", True
        self._ino = st.st_ino
        if st.st_size == self._offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        self._offset += len(chunk)
        data = self._buf + chunk
        lines, self._buf = _split_lines(data)
        out: list[Event] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                ev = _event_from_obj(json.loads(raw.decode("utf-8")))
            except (ValueError, KeyError, TypeError):
                self.bad_lines += 1
                continue
            if restarted and ev.seq <= self._last_seq:
                continue
            self._last_seq = max(self._last_seq, ev.seq)
            out.append(ev)
        return out


# ----------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------
def verify_main(path: str) -> int:
    """``nx47 verify-journal PATH``: print the verdict, return the exit status.

    Returns 0 for an intact journal (``OK <n> events, head <hash>``, plus a
    warning line for a torn tail), 1 for a broken chain (``BAD line <n>:
    <reason>`` on stderr), 2 when the file cannot be read.
    """
    try:
        res = verify_journal(path)
    except OSError as exc:
        print(f"cannot read journal {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not res.ok:
        print(f"BAD line {res.bad_line}: {res.reason}", file=sys.stderr)
        return 1
    print(f"OK {res.n_lines} events, head {res.head}")
    if res.torn_tail:
        print(f"WARNING torn tail: {res.reason}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 2:
        print("usage: python -m nx47_pipeline.telemetry.journal JOURNAL", file=sys.stderr)
        sys.exit(2)
    sys.exit(verify_main(sys.argv[1]))
