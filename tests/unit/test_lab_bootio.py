"""lab/bootio.py: a qemu trace of a workstation's disk turned into a fio iolog and a working set."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lab.bootio import BootIo

TRACE = """\
virtio_blk_handle_read vdev 0x55 req 0x56 sector 0 nsectors 1
virtio_blk_handle_read vdev 0x55 req 0x57 sector 2048 nsectors 8
virtio_blk_handle_write vdev 0x55 req 0x58 sector 4096 nsectors 2
some other line qemu printed
virtio_blk_handle_read vdev 0x55 req 0x59 sector 2052 nsectors 8
virtio_blk_handle_read vdev 0x55 req 0x5a sector 0 nsectors 1
"""


def test_requests_are_read_in_order_in_bytes() -> None:
    io = BootIo.parse(TRACE)
    assert io.requests == (
        ("read", 0, 512), ("read", 2048 * 512, 4096), ("write", 4096 * 512, 1024), ("read", 2052 * 512, 4096),
        ("read", 0, 512),
    )


def test_the_working_set_counts_each_byte_read_once() -> None:
    assert BootIo.parse(TRACE).summary() == {
        "reads": 4, "bytes_read": 512 + 4096 + 4096 + 512,
        "distinct_bytes_read": 512 + 12 * 512,  # sector 0 twice; sectors 2048-2059 (two reads overlap by 4)
        "writes": 1, "bytes_written": 1024, "distinct_bytes_written": 1024,
    }


def test_the_iolog_is_fios_version_2() -> None:
    log = BootIo.parse(TRACE).iolog("/dev/sdb").splitlines()
    assert log[:3] == ["fio version 2 iolog", "/dev/sdb add", "/dev/sdb open"]
    assert log[3:5] == ["/dev/sdb read 0 512", f"/dev/sdb read {2048 * 512} 4096"]
    assert log[5] == f"/dev/sdb write {4096 * 512} 1024"
    assert log[-1] == "/dev/sdb close" and len(log) == 3 + 5 + 1


def test_fio_replays_the_iolog(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (4 << 20))
    log = tmp_path / "boot.iolog"
    log.write_text(BootIo.parse(TRACE).iolog())
    replay = subprocess.run(
        ["fio", "--name=boot", f"--read_iolog={log}", f"--replay_redirect={disk}", "--output-format=json"],
        capture_output=True, text=True, check=True,
    )
    (job,) = json.loads(replay.stdout)["jobs"]
    assert job["read"]["io_bytes"] == 512 + 4096 + 4096 + 512
    assert job["write"]["io_bytes"] == 1024
