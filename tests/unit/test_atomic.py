"""Atomic writes: the final name holds the old or the new content, never half of one."""

import pytest

from nx47_pipeline.io.atomic import atomic_path, write_text
from nx47_pipeline.io.jsonio import write_json


def test_a_failed_write_keeps_the_previous_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "stats.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("disk full")
    assert target.read_text() == '{\n "a": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_temp_name_keeps_the_extension_and_lives_beside_the_target(tmp_path):
    with atomic_path(tmp_path / "sub" / "mask.tif") as tmp:
        assert tmp.parent == tmp_path / "sub" and tmp.suffix == ".tif"
        tmp.write_bytes(b"x")
    assert (tmp_path / "sub" / "mask.tif").read_bytes() == b"x"
    write_text(tmp_path / "t.csv", "id,scroll_id\r\n", newline="")
    assert (tmp_path / "t.csv").read_bytes() == b"id,scroll_id\r\n"
