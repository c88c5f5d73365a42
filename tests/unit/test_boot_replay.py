"""The boot-storm benchmark's golden image and working set, from a recorded boot's fio iolog
(benchmarks/boot_replay.py; the storm itself runs in the lab: scripts/lab bench --steps boots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.boot_replay import make_golden, working_set

IOLOG = """fio version 2 iolog
disk add
disk open
disk read 0 512
disk read 4096 8192
disk read 8192 8192
disk write 1048576 4096
disk read 0 512
disk close
"""


def test_the_working_set_counts_each_byte_read_once_and_the_reach_counts_writes(tmp_path: Path) -> None:
    iolog = tmp_path / "boot.iolog"
    iolog.write_text(IOLOG)
    distinct, reach, extents = working_set(iolog)
    assert distinct == 512 + (16384 - 4096)  # 4096..16384 overlaps once
    assert reach == 1048576 + 4096
    assert len(extents) == 4


def test_the_golden_image_has_data_wherever_the_boot_reads_and_holes_elsewhere(tmp_path: Path) -> None:
    iolog, golden = tmp_path / "boot.iolog", tmp_path / "golden.img"
    iolog.write_text(IOLOG)
    make_golden(golden, iolog, 4 << 20)
    data = golden.read_bytes()
    assert len(data) == 4 << 20
    assert data[:512].count(0) < 16 and data[4096:16384].count(0) < 256  # random bytes, not zeros
    assert data[16384:1 << 20] == bytes((1 << 20) - 16384)  # never read: left a hole
    with pytest.raises(AssertionError, match="beyond"):
        make_golden(tmp_path / "small.img", iolog, 1 << 20)
