"""Faults provoked for real in the lab VM, against the real helper, LIO and iSCSI clients.

The helper is killed (SIGKILL) at each of its crash points (broker/helper/faults.py) inside ensure_session, reset
and publish; it is restarted under workstations doing I/O; the server's power is cut with a workstation
logged in; the store runs out of room while an overlay is made; logins of one user race. After each:
nothing orphaned or half-made in the store, LIO or device-mapper (lab/invariants.py), a bystander's disk
intact, and the next login works.

Runs once per backend: dm-thin and reflink on XFS, dm-snapshot on ext4, on stores of their own
(tests/lab/test_helper.py runs reflink on btrfs). XFS, because on a btrfs whose data space is full a clone still succeeds (it needs only
metadata space), so the store could not run out while an overlay is made.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator

import pytest

from broker.helper.faults import ENVIRONMENT, POINTS
from lab.deployment import (
    Deployment,
    Grant,
    Workstation,
    clear_lio,
    expect_refused,
    iscsi_tool,
    prepare_accounts,
    qemu_io,
    reads_disk,
)
from lab.vm import Lab, LabResult

BACKENDS = {"reflink": "/srv/xfs/faults", "dm-snapshot": "/srv/ext4/faults", "dm-thin": "/srv/xfs/faults-thin"}
BYSTANDER = "keeper"  # her disk must come through every fault unchanged
BYSTANDER_PATTERN = "0x4b"


def release_devices(lab: Lab) -> None:
    """No LIO, dm device or loop device left from an earlier module or test."""
    clear_lio(lab)
    lab.run(["dmsetup", "remove_all"])
    lab.run(["losetup", "-D"])


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def deployment(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Deployment]:
    prepare_accounts(lab)
    release_devices(lab)
    d = Deployment(lab, request.param, BACKENDS[request.param])
    lab.run(["rm", "-rf", d.store])
    d.install()
    d.start()
    for image in ("demo", "other"):
        d.publish_random_golden(image)
    grant = d.ensure_session(BYSTANDER)
    done = qemu_io(lab, grant, f"write -P {BYSTANDER_PATTERN} 0 1M", "flush")
    assert done.returncode == 0, done.stdout + done.stderr
    yield d
    if d.process is not None:
        d.stop()
    release_devices(lab)
    if d.backend == "dm-thin":  # its pool holds a quarter of the XFS disk the reflink module's store fills up
        d.remove_store()


def bystander_intact(deployment: Deployment) -> None:
    grant = deployment.ensure_session(BYSTANDER)
    done = qemu_io(deployment.lab, grant, f"read -P {BYSTANDER_PATTERN} 0 1M")
    assert "read 1048576/1048576" in done.stdout and "verification failed" not in done.stdout, done.stdout


def write_flushed(deployment: Deployment, user: str, pattern: str) -> None:
    done = qemu_io(deployment.lab, deployment.ensure_session(user), f"write -P {pattern} 0 64k", "flush")
    assert done.returncode == 0 and "wrote 65536/65536" in done.stdout, done.stdout + done.stderr


def reads(deployment: Deployment, user: str, pattern: str) -> bool:
    done = qemu_io(deployment.lab, deployment.ensure_session(user), f"read -P {pattern} 0 64k")
    return "read 65536/65536" in done.stdout and "verification failed" not in done.stdout


def crash(deployment: Deployment, point: str, action: Callable[[], LabResult]) -> list[str]:
    """Start the helper armed to kill itself at `point`, make `action` reach it, check that the helper died
    there (SIGKILL) and that the caller got a clear error, then start it unarmed. Returns the repairs the
    restarted helper logged."""
    deployment.stop()
    deployment.start(env={ENVIRONMENT: point})
    result = action()
    expect_refused(result, "helper_unavailable")
    assert deployment.process is not None
    status = deployment.lab.wait(deployment.process, timeout=60)
    assert status.rc == -signal.SIGKILL, (status.rc, status.output)
    deployment.process = None
    deployment.start()
    return [line.split("reconcile: ", 1)[1] for line in deployment.log().splitlines() if "reconcile: " in line]


COLD = ["overlay-created", "overlay-committed", "storage-object-created"]  # a user's first login
WARM = ["target-created", "session-recorded", "acl-replaced"]  # a login that replaces a live session


def test_every_crash_point_is_tested() -> None:
    assert set(COLD + WARM + RESET + PUBLISH) == set(POINTS)


@pytest.mark.parametrize("point", COLD + WARM)
def test_a_helper_killed_inside_ensure_session_repairs_itself_at_start(deployment: Deployment, point: str) -> None:
    user = f"login-{point}"
    previous = None
    if point in WARM:
        previous = deployment.ensure_session(user)
        write_flushed(deployment, user, "0x61")
        previous = deployment.ensure_session(user)
    repairs = crash(deployment, point, lambda: deployment.cli("start-session", user, "demo", check=False))
    print(f"{deployment.backend} {point}: repaired {repairs}")
    assert deployment.problems() == []
    if previous is not None:
        # The login that died never reached the workstation. Until its session was recorded the previous
        # one stands; once recorded, the new one does (its ACL is put in place at start).
        assert (iscsi_tool(deployment.lab, "iscsi-inq", previous).returncode == 0) == (point == "target-created")
    grant = deployment.ensure_session(user)
    assert iscsi_tool(deployment.lab, "iscsi-inq", grant).returncode == 0
    if previous is not None:
        assert reads(deployment, user, "0x61")
    assert deployment.problems() == []
    bystander_intact(deployment)


RESET = ["reset-target-deleted", "reset-detached"]


@pytest.mark.parametrize("point", RESET)
def test_a_helper_killed_inside_reset_loses_no_disk(deployment: Deployment, point: str) -> None:
    user = f"reset-{point}"
    write_flushed(deployment, user, "0x72")
    repairs = crash(deployment, point, lambda: deployment.cli("reset", user, "demo", user="deskstaff", check=False))
    print(f"{deployment.backend} {point}: repaired {repairs}")
    assert deployment.problems() == []
    # The reset did not happen (the helpdesk saw it fail): her disk is as it was.
    assert reads(deployment, user, "0x72")
    # Run again, it does: a fresh copy, the old disk in a backup that restores.
    deployment.cli("reset", user, "demo", user="deskstaff")
    assert not reads(deployment, user, "0x72")
    deployment.cli("restore", user, "demo", user="deskstaff")
    assert reads(deployment, user, "0x72")
    assert deployment.problems() == []
    bystander_intact(deployment)


PUBLISH = ["publish-staged", "publish-renamed"]


@pytest.mark.parametrize("point", PUBLISH)
def test_a_helper_killed_inside_publish_leaves_the_image_as_it_was(deployment: Deployment, point: str) -> None:
    lab = deployment.lab
    source = "/tmp/next-other.img"
    lab.run(["dd", "if=/dev/urandom", f"of={source}", "bs=1M", "count=4", "status=none"])
    (before,) = [i for i in deployment.cli_json("images", "list") if i["image"] == "other"]
    repairs = crash(deployment, point, lambda: deployment.cli("images", "publish", "other", source, "--no-check", check=False))
    print(f"{deployment.backend} {point}: repaired {repairs}")
    assert deployment.problems() == []
    (after,) = [i for i in deployment.cli_json("images", "list") if i["image"] == "other"]
    assert after == before
    deployment.cli("images", "publish", "other", source, "--no-check")
    (published,) = [i for i in deployment.cli_json("images", "list") if i["image"] == "other"]
    newest = published["versions"][-1]
    assert published["current"] == newest["version"] == before["current"] + 1
    assert newest["sha256"] == lab.run(["sha256sum", source]).stdout.split()[0]
    bystander_intact(deployment)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_workstations_keep_reading_and_writing_while_the_helper_restarts(deployment: Deployment, how: int) -> None:
    grant = deployment.ensure_session(f"io-{how}")
    with Workstation(deployment.lab, grant) as workstation:
        assert workstation.completes("write -P 0x31 0 64k")
        deployment.stop(how)
        assert workstation.completes("write -P 0x32 64k 64k")  # no helper at all
        assert workstation.completes("read -P 0x31 0 64k")
        deployment.start()
        assert workstation.completes("write -P 0x33 128k 64k")
        for at, pattern in ((0, "0x31"), (64, "0x32"), (128, "0x33")):
            assert workstation.completes(f"read -P {pattern} {at}k 64k")
        # the same session all along: the restart neither dropped it nor made another ACL
        assert deployment.initiators(grant.target_iqn) == {grant.initiator_iqn: True}
    assert deployment.problems() == []


def test_two_logins_of_one_user_at_the_same_moment_leave_one_live_session(deployment: Deployment) -> None:
    user = "twin"
    write_flushed(deployment, user, "0x54")
    results: list[LabResult] = []
    start = threading.Barrier(2)

    def log_in() -> None:
        start.wait()
        results.append(deployment.cli("start-session", user, "demo", "--json", check=False))

    threads = [threading.Thread(target=log_in) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.rc for r in results] == [0, 0], [r.stderr for r in results]
    grants = [Grant(**json.loads(r.stdout)) for r in results]
    (winner,) = [g for g in grants if reads_disk(deployment.lab, g)]  # the other is fenced: no disk
    assert deployment.problems() == []
    assert reads(deployment, user, "0x54")


def test_a_store_that_fills_up_while_an_overlay_is_made_refuses_it_cleanly(deployment: Deployment) -> None:
    lab = deployment.lab
    filler = f"{deployment.store}/filler"
    deployment.stop()
    deployment.store_options = "min_free_percent = 0"  # no reserve: let the filesystem itself run out
    deployment.install()
    deployment.start()
    try:
        with Workstation(lab, deployment.ensure_session(BYSTANDER)) as bystander:
            fill_up(lab, filler)
            before = deployment.snapshot()
            for user in ("late-comer", BYSTANDER):  # a new overlay; a login that must write its record
                refused = deployment.cli("start-session", user, "demo", check=False)
                expect_refused(refused, "store_full")
                print(f"{deployment.backend}, {user}: {refused.stderr.strip()}")
            assert deployment.snapshot() == before  # no half-made overlay, no target, no record
            assert deployment.problems() == []
            # a workstation that was logged in goes on reading its disk
            assert bystander.completes(f"read -P {BYSTANDER_PATTERN} 0 1M")
            assert deployment.initiators(bystander.grant.target_iqn) == {bystander.grant.initiator_iqn: True}
    finally:
        lab.run(["rm", "-rf", filler])
        deployment.stop()
        deployment.store_options = ""
        deployment.install()
        deployment.start()
    assert iscsi_tool(lab, "iscsi-inq", deployment.ensure_session("late-comer")).returncode == 0
    assert deployment.problems() == []
    bystander_intact(deployment)


def test_after_a_power_cut_live_sessions_come_back_and_the_workstation_reconnects(deployment: Deployment) -> None:
    # Last in this module: the VM's tmpfs root (accounts, configuration) starts afresh.
    lab = deployment.lab
    grant = deployment.ensure_session("powered")
    revoked = deployment.ensure_session("revoked")
    with Workstation(lab, grant) as workstation:
        assert workstation.completes("write -f -P 0x50 0 64k")  # -f: FUA, on the disk when it completes
        # Written to blocks the overlay does not have yet (16 new thin blocks and the pool's metadata, a clone's
        # copies on write, a snapshot's new chunks: a third of its 3.2 MiB COW), then flushed as an OS syncs:
        # on the disk too, whatever the write cache.
        assert workstation.completes("write -P 0x52 1M 1M") and workstation.flushes(), workstation.output
        deployment.cli("end-session", "revoked", "demo")  # the moment before the cut: it must stay ended
        lab.power_cut()
        deployment.process = None
        prepare_accounts(lab)
        deployment.install()
        deployment.start()  # the kernel's LIO is empty: the session records bring the targets and ACLs back
        assert deployment.problems() == []
        # the same qemu-io, which lost its connection with the power, logs in again with the same
        # credentials (libiscsi reconnects by itself) and reads what it wrote before the cut
        assert workstation.completes("read -P 0x50 0 64k", seconds=180), workstation.output
        assert workstation.completes("read -P 0x52 1M 1M"), workstation.output
        assert workstation.completes("write -P 0x51 64k 64k")
        assert deployment.initiators(grant.target_iqn) == {grant.initiator_iqn: True}
    # Not put back: no target (only live sessions' targets are made again after a reboot), so no ACL.
    acls = f"/sys/kernel/config/target/iscsi/{revoked.target_iqn}/tpgt_1/acls"
    assert lab.run(["sh", "-c", f"ls {acls} 2>/dev/null; true"]).stdout.strip() == ""
    assert iscsi_tool(lab, "iscsi-inq", revoked).returncode != 0
    assert reads(deployment, "powered", "0x50")
    bystander_intact(deployment)
    assert deployment.problems() == []


FILL_UP = """
import os, sys
directory, count = sys.argv[1], 0
# Big files while they fit, allocated without writing them (under TCG, writing GiBs of zeros took a minute
# and a half per store); then written files down to the blocks filesystems keep in reserve.
for size, allocate in ((1 << 30, True), (1 << 24, True), (1 << 20, False), (4096, False), (1, False)):
    while True:
        try:
            with open(os.path.join(directory, f"f{count}"), "wb") as f:
                if allocate:
                    os.posix_fallocate(f.fileno(), 0, size)
                else:
                    f.write(b"x" * size)
                os.fsync(f.fileno())
        except OSError:
            break
        finally:
            count += 1
print(count)
"""


def fill_up(lab: Lab, filler: str) -> None:
    """Fill the store's filesystem until it refuses even the smallest file."""
    lab.run(["mkdir", "-p", filler])
    lab.run([str(lab.python), "-c", FILL_UP, filler], timeout=900)
