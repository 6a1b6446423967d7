"""array_trace: statistics and a digest that follows the content."""

import numpy as np
import pytest

from nx47_pipeline.telemetry import trace as trace_mod
from nx47_pipeline.telemetry.trace import array_trace


def test_stats_and_full_digest_for_small_arrays():
    a = np.arange(64, dtype=np.uint8).reshape(4, 4, 4)
    p = array_trace("vol", a)
    assert p.shape == [4, 4, 4] and p.dtype == "uint8"
    assert (p.min, p.max, p.mean) == (0.0, 63.0, 31.5)
    assert p.digest_method == "sha256-full"
    b = a.copy()
    b[3, 3, 3] = 0
    assert array_trace("vol", b).digest != p.digest
    assert array_trace("other name", a.copy()).digest == p.digest  # content, not name
    # same bytes, different shape or dtype -> different digest
    assert array_trace("vol", a.reshape(8, 8)).digest != p.digest
    assert array_trace("vol", a.view(np.int8)).digest != p.digest


def test_non_contiguous_view_equals_its_copy():
    a = np.random.default_rng(1).random((8, 9, 10)).astype(np.float32)
    v = a[:, ::2, 1:]
    assert array_trace("v", v).digest == array_trace("v", np.ascontiguousarray(v)).digest


def test_sampled_digest_for_large_arrays_sees_a_single_change(monkeypatch):
    monkeypatch.setattr(trace_mod, "FULL_HASH_MAX_BYTES", 1024)
    monkeypatch.setattr(trace_mod, "SAMPLE_BYTES", 256)
    a = np.zeros((32, 32, 32), dtype=np.float32)
    p = array_trace("big", a)
    assert p.digest_method.startswith("sha256-sampled(every 512th element")
    b = a.copy()
    b[17, 5, 3] = 1.0  # not on the sampling stride, but changes a slice sum
    assert array_trace("big", b).digest != p.digest
    assert array_trace("big", a.copy()).digest == p.digest


def test_non_finite_values_are_excluded_from_stats_and_counted():
    a = np.array([1.0, np.nan, 3.0, np.inf], dtype=np.float32)
    p = array_trace("f", a)
    assert (p.min, p.max, p.mean) == (1.0, 3.0, 2.0)
    assert "2 non-finite" in p.digest_method


def test_empty_and_bool_arrays():
    p = array_trace("e", np.zeros((0, 3)))
    assert p.min is None and p.max is None and p.mean is None and p.shape == [0, 3]
    m = np.zeros((4, 4), dtype=bool)
    m[0, :2] = True
    q = array_trace("m", m)
    assert (q.min, q.max, q.mean) == (0.0, 1.0, pytest.approx(0.125))
