from pathlib import Path

import pytest

from broker.helper.backends import filesystem_type, run_tool
from broker.helper.backends.dmsnapshot import snapshot_fill
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
