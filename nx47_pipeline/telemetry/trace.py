"""ARRAY_TRACE: a cheap fingerprint of an array at a stage boundary.

:func:`array_trace` reports shape, dtype, min / max / mean and a content
digest.  Cost on one core (measured, see ``benchmarks/results/telemetry.md``):
a 320³ uint8 volume is hashed in full; a 320³ float32 volume (128 MiB) is
fingerprinted by the sampled digest below.

Digest methods (the payload's ``digest_method`` says which one was used):

``sha256-full``
    SHA-256 of ``dtype``, ``shape`` and every byte (C order).  Used when the
    array has at most :data:`FULL_HASH_MAX_BYTES` bytes.
``sha256-sampled``
    SHA-256 of ``dtype``, ``shape``, every ``k``-th element of the flattened
    array (``k`` chosen so that about :data:`SAMPLE_BYTES` bytes are hashed,
    always including the first element) and the sums (numpy's default
    accumulator dtype) of every index along axis 0 (so a change anywhere that alters a slice sum changes the
    digest).  ``digest_method`` records ``k``.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from nx47_pipeline.telemetry.events import ArrayTracePayload

__all__ = ["array_trace", "FULL_HASH_MAX_BYTES", "SAMPLE_BYTES"]

FULL_HASH_MAX_BYTES = 64 * 2**20
SAMPLE_BYTES = 8 * 2**20


def _finite_or_none(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def array_trace(name: str, array) -> ArrayTracePayload:
    """Fingerprint ``array`` for an ARRAY_TRACE event.

    Parameters
    ----------
    name : str
        What the array is (e.g. ``"features/1407735:X"``).
    array : array_like
        Any numpy-convertible array.  Statistics are None for empty or
        non-numeric arrays; NaN / Inf are excluded from min / max / mean and
        counted in the digest method text.

    Returns
    -------
    ArrayTracePayload
    """
    a = np.asarray(array)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    mn = mx = mean = None
    note = ""
    numeric = a.dtype.kind in "biuf"
    if a.size and numeric:
        if a.dtype.kind == "b":
            mean = float(np.count_nonzero(a)) / a.size
            mn, mx = float(a.min()), float(a.max())
        else:
            mn = a.min()
            mx = a.max()
            if a.dtype.kind == "f" and not (np.isfinite(mn) and np.isfinite(mx)):
                finite = np.isfinite(a)
                n_bad = int(a.size - np.count_nonzero(finite))
                note = f"; {n_bad} non-finite values excluded from stats"
                vals = a[finite]
                if vals.size:
                    mn, mx, mean = vals.min(), vals.max(), vals.mean(dtype=np.float64)
                else:
                    mn = mx = mean = None
            else:
                mean = a.mean()  # float32 pairwise sum for float32, float64 otherwise
        mn, mx, mean = _finite_or_none(mn), _finite_or_none(mx), _finite_or_none(mean)
    if a.dtype.kind == "O":
        h.update(repr(a.tolist()).encode())
        method = "sha256-repr(object array)"
    elif a.nbytes <= FULL_HASH_MAX_BYTES:
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        method = "sha256-full"
    else:
        flat = a.reshape(-1)
        k = max(1, math.ceil(a.nbytes / SAMPLE_BYTES))
        sample = np.ascontiguousarray(flat[::k])
        h.update(sample.view(np.uint8))
        if a.ndim >= 1 and numeric:
            axes = tuple(range(1, a.ndim))
            sums = a.sum(axis=axes) if axes else a
            h.update(np.ascontiguousarray(sums).tobytes())
        method = (
            f"sha256-sampled(every {k}th element of {a.size}, "
            f"+ sums along axis 0)"
        )
    return ArrayTracePayload(
        name=str(name),
        shape=[int(s) for s in a.shape],
        dtype=str(a.dtype),
        min=mn,
        max=mx,
        mean=mean,
        digest=h.hexdigest(),
        digest_method=method + note,
    )
