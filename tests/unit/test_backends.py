from pathlib import Path

import pytest

from broker.backends import filesystem_type, run_tool
from broker.backends.reflink import ReflinkBackend
from broker.errors import BackendFailure


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
