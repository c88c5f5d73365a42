"""The lab VM itself: a real kernel LIO reachable from the host over iSCSI with CHAP, reflink,
loop and device-mapper, an isolated root, and the agent's run/spawn/signal/wait."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.vm import Lab, LabCommandError, LabError

TARGET_IQN = "iqn.2026-11.org.example.lab:smoke"
INITIATOR_IQN = "iqn.2026-11.org.example.lab:smoke-client"
CHAP_USER = "smoke"
CHAP_SECRET = "Sm0keSecretLab42"
BACKING_FILE = "/srv/btrfs/smoke-lun.img"

# The rtslib calls the helper will make, in their plainest form. Secrets come on stdin, not argv.
MAKE_TARGET = f"""
import sys
from rtslib_fb import (
    LUN, TPG, FabricModule, FileIOStorageObject, MappedLUN, NetworkPortal, NodeACL, Target,
)
user, secret = sys.stdin.read().split()
storage = FileIOStorageObject("smoke", "{BACKING_FILE}", size=64 * 2**20)
tpg = TPG(Target(FabricModule("iscsi"), "{TARGET_IQN}"), 1)
tpg.set_attribute("authentication", "1")
tpg.set_attribute("generate_node_acls", "0")
lun = LUN(tpg, 0, storage)
NetworkPortal(tpg, "0.0.0.0", 3260)
acl = NodeACL(tpg, "{INITIATOR_IQN}")
acl.chap_userid = user
acl.chap_password = secret
MappedLUN(acl, 0, lun)
tpg.enable = True
"""
CLEAR_LIO = "from rtslib_fb import RTSRoot; RTSRoot().clear_existing(confirm=True)"


@pytest.fixture(scope="module")
def smoke_target(lab: Lab) -> Iterator[None]:
    lab.run([str(lab.python), "-c", MAKE_TARGET], stdin=f"{CHAP_USER} {CHAP_SECRET}")
    yield
    lab.run([str(lab.python), "-c", CLEAR_LIO])
    lab.run(["rm", "-f", BACKING_FILE])


def iscsi_inq(lab: Lab, secret: str) -> subprocess.CompletedProcess[str]:
    url = f"iscsi://{CHAP_USER}%{secret}@127.0.0.1:{lab.iscsi_port}/{TARGET_IQN}/0"
    return subprocess.run(
        ["iscsi-inq", "-i", INITIATOR_IQN, url], capture_output=True, text=True, timeout=120
    )


def test_report_timings(lab: Lab) -> None:
    """Not a pass/fail check: prints the figures the lab's users plan around (pytest -s)."""
    began = time.monotonic()
    lab.run([str(lab.python), "-c", "import rtslib_fb"])
    print(f"\nlab boot: {lab.boot_seconds:.1f} s; import rtslib_fb in the VM: "
          f"{time.monotonic() - began:.1f} s")


def test_configfs_has_lio_core_and_iscsi(lab: Lab, smoke_target: None) -> None:
    listing = lab.run(["ls", "/sys/kernel/config/target"]).stdout.split()
    assert {"core", "iscsi"} <= set(listing)
    tpg = f"/sys/kernel/config/target/iscsi/{TARGET_IQN}/tpgt_1"
    assert lab.run(["cat", f"{tpg}/enable"]).stdout.strip() == "1"


def test_host_logs_in_with_the_right_chap_secret(lab: Lab, smoke_target: None) -> None:
    done = iscsi_inq(lab, CHAP_SECRET)
    assert done.returncode == 0, done.stderr
    assert "LIO-ORG" in done.stdout


def test_host_is_refused_with_a_wrong_chap_secret(lab: Lab, smoke_target: None) -> None:
    done = iscsi_inq(lab, "Wr0ngSecretLab42")
    assert done.returncode != 0
    assert "login" in (done.stdout + done.stderr).lower()


@pytest.mark.parametrize(("fs", "reflinks"), [("btrfs", True), ("xfs", True), ("ext4", False)])
def test_reflink_where_the_backends_expect_it(lab: Lab, fs: str, reflinks: bool) -> None:
    source, clone = f"/srv/{fs}/reflink-source", f"/srv/{fs}/reflink-clone"
    lab.run(["dd", "if=/dev/urandom", f"of={source}", "bs=1M", "count=4", "status=none"])
    try:
        done = lab.run(["cp", "--reflink=always", source, clone], check=False)
        assert (done.rc == 0) is reflinks, done.stderr
        if reflinks:
            lab.run(["cmp", source, clone])
    finally:
        lab.run(["rm", "-f", source, clone])


def test_loop_and_device_mapper(lab: Lab) -> None:
    backing = "/srv/ext4/dm-smoke.img"
    lab.run(["truncate", "-s", "16M", backing])
    loop = lab.run(["losetup", "--find", "--show", backing]).stdout.strip()
    try:
        assert "snapshot" in lab.run(["dmsetup", "targets"]).stdout
        lab.run(["dmsetup", "create", "lab-smoke", "--table", f"0 32768 linear {loop} 0"])
        # No udev in the VM: device nodes appear only when asked for.
        lab.run(["dmsetup", "mknodes"])
        lab.run(["test", "-b", "/dev/mapper/lab-smoke"])
        lab.run(["dd", "if=/dev/zero", "of=/dev/mapper/lab-smoke", "bs=1M", "count=1"])
        lab.run(["dmsetup", "remove", "lab-smoke"])
        lab.run(["dmsetup", "mknodes"])
        assert lab.run(["test", "-e", "/dev/mapper/lab-smoke"], check=False).rc == 1
    finally:
        lab.run(["dmsetup", "remove", "--force", "lab-smoke"], check=False)
        lab.run(["losetup", "-d", loop])
        lab.run(["rm", "-f", backing])


def test_vm_writes_do_not_reach_the_host(lab: Lab) -> None:
    probe = lab.repo / "lab-write-probe"
    lab.run(["touch", str(probe)])
    lab.run(["test", "-e", str(probe)])
    assert not probe.exists()


def test_run_as_user_drops_privileges(lab: Lab) -> None:
    assert lab.run(["id", "-u"], user="nobody").stdout.strip() == "65534"
    # The host's Python lives under /root (0700); the VM must still let users run it.
    done = lab.run([str(lab.python), "-c", "import os; print(os.getuid())"], user="nobody")
    assert done.stdout.strip() == "65534"


def test_run_reports_failure_and_timeout(lab: Lab) -> None:
    with pytest.raises(LabCommandError) as failed:
        lab.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (failed.value.rc, failed.value.stdout, failed.value.stderr) == (3, "out\n", "err\n")
    began = time.monotonic()
    done = lab.run(["sh", "-c", "sleep 300 & sleep 300"], timeout=2, check=False)
    assert done.timed_out and done.rc is None
    assert time.monotonic() - began < 60
    # The whole process group was killed, the background sleep too.
    assert lab.run(["pgrep", "-x", "sleep"], check=False).rc == 1


def test_spawn_signal_and_wait(lab: Lab) -> None:
    script = "echo started; trap 'echo bye; exit 7' TERM; while :; do sleep 0.1; done"
    handle = lab.spawn(["sh", "-c", script])
    deadline = time.monotonic() + 60
    while "started" not in lab.wait(handle, timeout=0.5).output:
        assert time.monotonic() < deadline
    assert lab.wait(handle, timeout=0).rc is None
    lab.signal(handle, signal.SIGTERM)
    status = lab.wait(handle, timeout=60)
    assert (status.rc, status.output) == (7, "started\nbye\n")


def test_agent_errors_are_answers(lab: Lab) -> None:
    with pytest.raises(LabError, match="FileNotFoundError"):
        lab.run(["/nonexistent/command"])
    assert lab.run(["true"]).rc == 0


def test_agent_refuses_a_wrong_token(lab: Lab) -> None:
    agent_port = lab._ports["agent"]  # noqa: SLF001 - deliberately bypassing the client
    with socket.create_connection(("127.0.0.1", agent_port), timeout=30) as conn:
        conn.sendall(json.dumps({"op": "ping", "token": "guess"}).encode() + b"\n")
        reply = json.loads(conn.makefile("rb").readline())
    assert reply == {"error": "bad token"}


def test_lab_cleans_up(tmp_path: Path) -> None:
    """A Lab that fails to boot leaves no qemu behind (here: a boot timeout far too short)."""
    broken = Lab(work_dir=tmp_path, boot_timeout=0.5)
    with pytest.raises(LabError, match="did not answer"):
        broken.start()
    assert broken._qemu is None  # noqa: SLF001
    assert subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).returncode == 1
