from pathlib import Path

import pytest

from broker.helper.backends import filesystem_type, run_tool
from broker.helper.backends.dmsnapshot import snapshot_fill
from broker.helper.backends import devicemapper as dm
from broker.helper.backends.dmthin import DmThinBackend, metadata_bytes, pool_fill, pool_name, thin_mapped_bytes
from broker.helper.backends.reflink import ReflinkBackend
from broker.shared.errors import BackendFailure


def test_filesystem_type_reads_mountinfo(tmp_path: Path) -> None:
    assert filesystem_type(Path("/proc/self")) == "proc"
    assert filesystem_type(tmp_path) != "unknown"


@pytest.mark.skipif(filesystem_type(Path("/tmp")) in ("btrfs", "xfs"), reason="needs a filesystem without reflink")
def test_reflink_probe_says_what_to_fix_on_a_filesystem_without_reflink(tmp_path: Path) -> None:
    with pytest.raises(BackendFailure) as info:
        ReflinkBackend().probe(tmp_path)
    assert filesystem_type(tmp_path) in info.value.message
    assert "dm-snapshot" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_run_tool_reports_missing_and_failing_commands() -> None:
    with pytest.raises(BackendFailure, match="not installed"):
        run_tool(["/nonexistent/tool"])
    with pytest.raises(BackendFailure, match="failed"):
        run_tool(["false"])
    assert run_tool(["echo", "hi"]) == "hi\n"


@pytest.mark.parametrize("status, fill", [
    ("0 65536 snapshot 1024/131072 16", 1024 / 131072 * 100),
    ("0 65536 snapshot 131072/131072 16", 100.0),
    ("0 65536 snapshot Invalid", 100.0),  # the COW file overflowed: the overlay's changes are lost
    ("0 65536 snapshot-merge 16/128 16", None),
    ("0 65536 snapshot 16/0 16", None),
    ("0 65536 linear", None),
])
def test_snapshot_fill_from_dmsetup_status(status: str, fill: float | None) -> None:
    assert snapshot_fill(status) == fill


@pytest.mark.parametrize("status, fill", [
    ("0 2097152 thin-pool 3 88/4096 10/16 - rw discard_passdown queue_if_no_space - 1024", 62.5),
    ("0 2097152 thin-pool 3 4000/4096 1/16 - rw discard_passdown queue_if_no_space - 1024", 4000 / 4096 * 100),
    ("0 2097152 thin-pool 3 88/4096 16/16 - out_of_data_space discard_passdown queue_if_no_space - 1024", 100.0),
    ("0 2097152 thin-pool 3 88/4096 2/16 - ro discard_passdown queue_if_no_space needs_check 1024", 100.0),
    ("0 2097152 thin-pool Fail", 100.0),
    ("0 2097152 thin-pool 3 88/0 2/16 - rw", None),
    ("0 2097152 thin 256 2047", None),
])
def test_pool_fill_from_dmsetup_status(status: str, fill: float | None) -> None:
    assert pool_fill(status) == fill


@pytest.mark.parametrize("status, used", [
    ("0 524288 thin 256 2047", 256 * 512),
    ("0 524288 thin 0 -", 0),
    ("0 524288 thin Fail", None),
    ("0 524288 thin-pool 3 88/4096 10/16 - rw", None),
])
def test_thin_mapped_bytes_from_dmsetup_status(status: str, used: int | None) -> None:
    assert thin_mapped_bytes(status) == used


def test_pool_metadata_is_sized_for_its_data_within_dm_thins_limits() -> None:
    assert metadata_bytes(2**30) == 16 * 2**20  # the floor
    assert metadata_bytes(2**40) == 2**40 // (64 * 1024) * 128  # 2 GiB for 1 TiB of data
    assert metadata_bytes(2**50) < 16 * 2**30  # dm-thin's ceiling
    assert metadata_bytes(12345678901) % 4096 == 0


def test_each_store_has_its_own_pool_name(tmp_path: Path) -> None:
    one, other = pool_name(tmp_path / "a" / "pool"), pool_name(tmp_path / "b" / "pool")
    assert one != other and one.startswith("bb-pool-") and len(one) == len("bb-pool-") + 12
    assert pool_name(tmp_path / "a" / "pool") == one


def test_a_thin_volume_device_of_the_overlays_name_but_not_its_uuid_is_refused_not_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = DmThinBackend(tmp_path / "pool", pool_percent=75)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "thin-id").write_text("7\n")
    devices = {"bb.demo.dave": "bb-pool-other-7"}  # another store's volume 7 under the same name
    monkeypatch.setattr(dm, "exists", lambda name, uuid=None: name in devices and uuid in (None, devices[name]))
    monkeypatch.setattr(dm, "loop_for", lambda *a, **k: pytest.fail("attach went on to make a device"))
    with pytest.raises(BackendFailure, match="bb.demo.dave exists that is not this overlay's thin volume"):
        backend.attach(tmp_path / "golden.img", overlay, "bb.demo.dave")
    devices["bb.demo.dave"] = f"{backend.pool}-7"  # its own: taken as it is
    assert backend.attach(tmp_path / "golden.img", overlay, "bb.demo.dave") == dm.MAPPER / "bb.demo.dave"
