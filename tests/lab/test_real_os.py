"""A real operating system on the user's own disk: Debian 12 built by `bootbroker images build`, booted by
real workstations, BIOS (SeaBIOS) and UEFI (OVMF), from the user's overlay through LIO.

Each workstation boots as a site's does: its firmware's PXE gets the site's iPXE (v2.0.0, built by
ipxe/build.py to trust the broker's certificate) by DHCP and TFTP, and its embedded script goes on to the
broker over HTTPS; the first two workstations' captures show the TLS suite and that nothing went in clear.
iPXE logs in and `sanboot`s; GRUB reads the kernel and initramfs through iPXE's SAN hook; the initramfs's
open-iscsi logs in again with what the iBFT says (this boot session's initiator name and CHAP secret).
The same system built with `--initramfs dracut` boots once by netroot: iPXE loads its version's kernel and
initrd from the broker, and dracut logs in with what netroot= says. Then
systemd reaches multi-user and the lab's units (lab/os-customize) count the boot in a file on the root
filesystem and, every 10 s, write and sync a heartbeat there, each printed on the serial console. Each
boot costs minutes under TCG, so one running OS serves several checks; the tests run in file order and
the last one cuts the server's power.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator, Sequence

import pytest

from broker.images.build import ROOT_START, netroot_cmdline
from lab import realos, tls_wire
from lab.bootio import BootIo
from lab.build import cache_dir
from lab.broker import HTTPS_URL, BrokerDeployment, lab_tls, running
from lab.deployment import Deployment, prepare_accounts, refused_logins
from lab.ipxe_client import IpxeClient
from lab.timeline import LOCAL_BOOT, NETROOT_BOOT, OS_BOOT, Timeline
from lab.vm import CLIENT_SIDE, GUEST_PORTS, Lab
from tests.lab import Report

STORE = "/srv/btrfs/bootbroker-os"
NETROOT = "netroot"  # the image booted by dracut's netroot: second in a student's disk menu ("other" has no version)
# What the kernel prints when an I/O error reaches the OS's disk or filesystem.
IO_FAILURE = re.compile(r"I/O error|EXT4-fs error|Remounting filesystem read-only|Aborting journal")


@pytest.fixture(scope="module")
def broker(lab: Lab) -> Iterator[BrokerDeployment]:
    image = realos.ensure_os_image()
    dracut_image = realos.ensure_os_image(initramfs="dracut")
    # netroot's kernel command line names the root filesystem (the image's GRUB does so for sanboot).
    netroot_image = f"""
[images.{NETROOT}]
description = "Debian by netroot"
users = ["*"]
boot = "netroot"
cmdline = "{netroot_cmdline(realos.root_uuid(dracut_image))}"
"""

    def publish(helper: Deployment) -> None:
        helper.cli("images", "publish", "demo", str(image), timeout=900)
        helper.cli("images", "publish", NETROOT, str(dracut_image), timeout=900)

    # LIO listens on the very address the workstations reach it at, which discovery then reports: netroot
    # logs in to that record (a wildcard portal would report the lab VM's own 10.0.2.15).
    portal = f"{CLIENT_SIDE}:3260"
    with running(lab, STORE, advertise=portal, portal=portal, more_images=netroot_image, publish=publish,
                 url=HTTPS_URL, tls=lab_tls()) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def local_boots() -> dict[str, Timeline]:
    """The image's boot from a workstation's local disk, per firmware: the baseline of its iSCSI boots."""
    return {}


@pytest.fixture(scope="module")
def sanboots() -> dict[str, Timeline]:
    """student1's first sanboot per firmware, to compare the netroot boot with."""
    return {}


def compared(iscsi: Timeline, local: Timeline | None) -> str:
    """The iSCSI boot against the same image's boot from a local disk: GRUB to multi-user, and in all."""
    if local is None:
        return "  (no local-disk boot of this firmware to compare with)"
    lines = []
    for what, mine, theirs in (
        ("from GRUB to multi-user", iscsi.between("bootloader", "multi-user"), local.between("bootloader", "multi-user")),
        ("choosing the disk (iSCSI) or power-on (local) to multi-user", iscsi.seen.get("multi-user"),
         local.seen.get("multi-user")),
    ):
        if mine is not None and theirs:
            lines.append(f"  {what}: {mine:.1f} s over iSCSI, {theirs:.1f} s from a local disk: {mine / theirs:.2f}x")
    return "\n".join(lines)


def boot_os(workstation: IpxeClient, broker: BrokerDeployment, user: str,
            report: Report | None = None, baseline: dict[str, Timeline] | None = None, *,
            choice: Sequence[str] = ("ret",), milestones: Sequence[tuple[str, str]] = OS_BOOT,
            timelines: dict[str, Timeline] | None = None) -> tuple[int, str, str, str]:
    """Log in as `user` at a fresh workstation, boot the disk the keys `choice` choose (the menu's default,
    the first image), wait for the OS's marker line; returns (boot count on the disk, root device, target
    IQN, the root session's recovery_tmo). With `report`, the boot's phases (`milestones`) are printed,
    compared with `baseline`'s boot of the same firmware from a local disk; `timelines` keeps them by
    firmware."""
    assert broker.tls is not None
    workstation.pxe_boot(broker.tls.ipxe)
    at = workstation.log_in(user, broker.passwords[user])
    timeline = Timeline(workstation.screen, milestones, after=at)
    timeline.start()
    workstation.keys(*choice)
    try:
        at = workstation.wait_for(realos.MARKER, after=at, timeout=realos.OS_BOOT)
    finally:
        timeline.stop()
    if report is not None:
        report(timeline.table(f"{workstation.firmware.upper()} boot of {user}'s Debian from choosing the disk:"))
        report(compared(timeline, (baseline or {}).get(workstation.firmware)))
    if timelines is not None:
        timelines.setdefault(workstation.firmware, timeline)
    (marked,) = realos.boots(workstation.screen()[at - len(realos.MARKER):])
    return marked


def over_tls(workstation: IpxeClient) -> str:
    """What the workstation's capture shows of its talk with the broker, checked: every connection TLS 1.2
    with one of the broker's suites, each carrying its requests encrypted, nothing to the plain-HTTP port."""
    assert workstation.capture is not None
    connections = tls_wire.read_all(workstation.capture, GUEST_PORTS["broker"])
    assert connections, "no TLS connection to the broker in the capture"
    for handshake in connections:
        assert handshake.version == 0x0303 and handshake.suite in tls_wire.SUITES, handshake
        assert handshake.client.encrypted and handshake.client.application_bytes > 0
    assert tls_wire.read_all(workstation.capture, GUEST_PORTS["http"]) == []
    suites = sorted({handshake.suite_name for handshake in connections})
    resumed = sum(handshake.resumed for handshake in connections)
    return (f"  TLS: {len(connections)} connections to {HTTPS_URL}, TLS 1.2, {', '.join(suites)}; "
            f"{len(connections) - resumed} full handshakes, {resumed} resumed; "
            f"iPXE offered {len(connections[0].offered)} suites; nothing in clear")


def heartbeats(workstation: IpxeClient, after: int = 0) -> list[int]:
    return realos.heartbeats(workstation.screen()[after:])


def beats_on(workstation: IpxeClient, after: int, count: int = 2, timeout: float = 300) -> None:
    """Wait for `count` new heartbeats after console position `after`: the OS wrote and synced its disk."""
    deadline = time.monotonic() + timeout
    while len(heartbeats(workstation, after)) < count and time.monotonic() < deadline:
        time.sleep(2)
    assert len(heartbeats(workstation, after)) >= count, workstation.screen()[-3000:]
    failures = IO_FAILURE.findall(workstation.screen()[after:])
    assert not failures, f"the OS saw I/O errors: {failures}\n{workstation.screen()[-3000:]}"


def on_disk(helper: Deployment, user: str, path: str) -> str | None:
    """A file of the OS's root filesystem as it is on the user's overlay of demo in the store (None: no such
    file), read with the workstation off or running. What the OS synced may still be in ext4's journal only
    (as durable, not yet in place), so a reflink copy of the overlay gets its journal replayed (e2fsck, as
    the OS's next mount would) before debugfs reads the file. Through a loop device at the root's offset:
    e2fsck re-opens the filesystem after a replay without `?offset=`."""
    disk = f"{helper.overlay_dir('demo', user)}/disk.img"
    copy = f"{helper.store}/on-disk-check.img"
    helper.lab.run(["cp", "--reflink=always", disk, copy])
    try:
        loop = helper.lab.run(["losetup", "--find", "--show", "--offset", str(ROOT_START), copy]).stdout.strip()
        try:
            replayed = helper.lab.run(["e2fsck", "-y", "-E", "journal_only", loop], check=False)
            assert replayed.rc in (0, 1), replayed  # 1: the journal was replayed
            found = helper.lab.run(["debugfs", "-R", f"cat {path}", loop])
        finally:
            helper.lab.run(["losetup", "-d", loop])
    finally:
        helper.lab.run(["rm", "-f", copy])
    if "File not found" in found.stderr:
        return None
    return found.stdout


@pytest.fixture(scope="module")
def workstations(lab: Lab) -> Iterator[dict[str, IpxeClient]]:
    """The module's workstations, left running from one test to the next (a boot costs minutes)."""
    machines = {
        "bios": IpxeClient(lab, "os-bios", firmware="bios", memory_mb=1024, capture=True),
        "uefi": IpxeClient(lab, "os-uefi", firmware="uefi", memory_mb=1024, capture=True),
    }
    try:
        yield machines
    finally:
        for machine in machines.values():
            machine.stop()


def test_the_image_boots_from_a_local_disk_too_the_baseline_of_its_iscsi_boots(
    lab: Lab, report: Report, local_boots: dict[str, Timeline]
) -> None:
    image = realos.ensure_os_image()
    for firmware in ("bios", "uefi"):
        trace = lab.work_dir / f"os-local-{firmware}.io-trace"
        workstation = IpxeClient(lab, f"os-local-{firmware}", firmware=firmware, memory_mb=1024, local_disk=image,
                                 io_trace=trace)
        timeline = Timeline(workstation.screen, LOCAL_BOOT)
        workstation.start("")
        timeline.start()
        try:
            at = workstation.wait_for(realos.MARKER, timeout=realos.OS_BOOT)
        finally:
            timeline.stop()
            workstation.stop()
        assert realos.boots(workstation.screen()[at - len(realos.MARKER):])[0][:2] == (1, "/dev/vda3")
        local_boots[firmware] = timeline
        report(timeline.table(f"{firmware.upper()} boot of the same image from a local disk, from power-on:"))
        # Its disk I/O from power-on to the marker, kept for the boot-storm benchmarks to replay.
        io = BootIo.parse(trace.read_text())
        figures = io.summary()
        assert figures["reads"] > 0 and figures["distinct_bytes_read"] <= figures["bytes_read"]
        kept = cache_dir() / f"boot-io-{image.stem}-{firmware}.iolog"
        kept.write_text(io.iolog())
        report(f"  its disk I/O: {figures['reads']} reads, {figures['bytes_read'] / 2**20:.1f} MiB "
               f"({figures['distinct_bytes_read'] / 2**20:.1f} MiB distinct: the working set), "
               f"{figures['writes']} writes, {figures['bytes_written'] / 2**20:.1f} MiB; fio iolog: {kept}")


def test_her_os_boots_bios_then_uefi_with_its_writes_and_the_second_workstation_takes_the_disk(
    broker: BrokerDeployment, lab: Lab, workstations: dict[str, IpxeClient], report: Report,
    local_boots: dict[str, Timeline], sanboots: dict[str, Timeline],
) -> None:
    helper = broker.helper
    target = helper.target_iqn("demo", "student1")
    first, second = workstations["bios"], workstations["uefi"]
    # BIOS: the OS runs from student1's overlay and writes its first boot there.
    count, root, booted_target, recovery = boot_os(first, broker, "student1", report, local_boots,
                                                   timelines=sanboots)
    assert (count, booted_target) == (1, target)
    assert root.startswith("/dev/sd")  # the iSCSI disk, found by UUID
    assert recovery == "600"  # the image's udev rule gave the initramfs's session the long timeout
    report(over_tls(first))
    (first_initiator, logged_in), = helper.initiators(target).items()
    assert logged_in  # the OS's own session from the iBFT: the same ACL iPXE used

    # UEFI, another workstation, the same user: her disk, with the first OS's write in it (boot 2); the
    # first workstation's ACL is gone, so it can write nothing more.
    count, _, booted_target, _ = boot_os(second, broker, "student1", report, local_boots, timelines=sanboots)
    assert (count, booted_target) == (2, target)
    report(over_tls(second))
    (second_initiator, logged_in), = helper.initiators(target).items()
    assert second_initiator != first_initiator and logged_in
    # The first OS notices, and its iscsid logs in again with its old keys: to the fence the takeover left
    # it, an ACL that maps no LUN. Its heartbeats stop (it can write nothing) while the second OS's go on,
    # and it does not retry: no refused login in the server's log, then or later.
    assert helper.logged_in_to_fence(target, first_initiator, timeout=180), \
        "the taken-over OS never logged in again"
    stalled = len(first.screen())
    beats_on(second, len(second.screen()), count=3)
    assert heartbeats(first, stalled) == []
    refused = refused_logins(lab, first_initiator)
    assert len(refused) <= 1, refused  # at most one, should its iscsid try before the fence was in place
    seen = sorted(set(IO_FAILURE.findall(first.screen()[stalled:])))
    report(f"the taken-over OS logged in again with its old keys, to its fence (no disk); refused logins: "
           f"{len(refused)}; what it printed since: {', '.join(seen) or 'no I/O error yet'}")
    first.stop()


def test_her_os_keeps_writing_through_helper_restarts(
    broker: BrokerDeployment, workstations: dict[str, IpxeClient]
) -> None:
    helper, running_os = broker.helper, workstations["uefi"]
    assert running_os.process is not None, "the previous test left no running OS"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        at = len(running_os.screen())
        helper.stop(sig)
        beats_on(running_os, at, count=1)  # no helper: LIO serves on
        helper.start()
        assert helper.problems() == []
        beats_on(running_os, len(running_os.screen()))


def test_another_user_boots_her_own_fresh_copy_and_the_helpdesk_resets_and_restores_it(
    broker: BrokerDeployment, lab: Lab
) -> None:
    workstation = IpxeClient(lab, "os-student2", firmware="uefi", memory_mb=1024)
    try:
        count, _, booted_target, _ = boot_os(workstation, broker, "student2")
    finally:
        workstation.stop()
    assert (count, booted_target) == (1, broker.helper.target_iqn("demo", "student2"))  # isolation: not student1's
    # Reset and restore are read in the store, not booted: that a fresh copy boots was just seen, and that
    # a disk with a user's boots on it boots, in every test before.
    boots = "/var/lib/lab/boots"
    assert on_disk(broker.helper, "student2", boots) == "1\n"
    broker.helper.cli("reset", "student2", "demo")
    # Her disk set aside as a backup: her next login makes a fresh copy of the golden image.
    disk = f"{broker.helper.overlay_dir('demo', 'student2')}/disk.img"
    assert lab.run(["test", "-e", disk], check=False).rc == 1
    assert [row["user"] for row in broker.helper.cli_json("backups")] == ["student2"]
    broker.helper.cli("restore", "student2", "demo")  # the newest backup: the copy with her first boot
    assert on_disk(broker.helper, "student2", boots) == "1\n"


def test_a_teachers_prepared_os_becomes_the_next_version_and_a_new_user_boots_it(
    broker: BrokerDeployment, lab: Lab, report: Report
) -> None:
    # student2's disk (restored above, one boot counted on it) stands in for a teacher's prepared system. It
    # has no live session (the reset dropped hers, and she has not logged in since), so publish takes it.
    began = time.monotonic()
    published = broker.helper.cli("images", "publish", "demo", "--from-overlay", "demo", "student2", timeout=900)
    report(f"images publish --from-overlay of a real OS took {time.monotonic() - began:.0f} s")
    assert "published demo version 2 from the overlay of student2 on demo" in published.stdout
    assert "kernel /boot/vmlinuz-" in published.stdout  # its own kernel and initrd, read out of her disk
    broker.add_user("student3")
    workstation = IpxeClient(lab, "os-student3", firmware="uefi", memory_mb=1024)
    try:
        count, _, booted_target, _ = boot_os(workstation, broker, "student3")
    finally:
        workstation.stop()
    assert booted_target == broker.helper.target_iqn("demo", "student3")
    assert count == 2  # student2's boot is in the new version: student3 starts from her system


def test_netroot_boots_her_disk_with_her_versions_own_kernel_and_initrd_from_the_broker(
    broker: BrokerDeployment, lab: Lab, report: Report, local_boots: dict[str, Timeline],
    sanboots: dict[str, Timeline],
) -> None:
    """dracut's netroot, the seed's own path, on UEFI as in the Fedora article: iPXE loads the kernel and
    initrd of the version her disk was made from, by the broker's signed link, and boots them; dracut
    discovers the target at the portal netroot= names (LIO listens on that very address), logs in with
    netroot='s CHAP credentials and mounts her root."""
    broker.add_user("student4")
    workstation = IpxeClient(lab, "os-netroot", firmware="uefi", memory_mb=1024)
    netroots: dict[str, Timeline] = {}
    try:
        count, root, booted_target, recovery = boot_os(
            workstation, broker, "student4", report, local_boots, choice=("down", "ret"),
            milestones=NETROOT_BOOT, timelines=netroots)
        beats_on(workstation, len(workstation.screen()))
        fetched = [line for line in workstation.screen().splitlines()
                   if f"/boot/{NETROOT}/" in line and " ok" in line]
    finally:
        workstation.stop()
    assert (count, booted_target) == (1, broker.helper.target_iqn(NETROOT, "student4"))
    assert root.startswith("/dev/sd") and recovery == "600"
    assert len(fetched) == 2, fetched  # vmlinuz and initrd.img, from the broker by the boot link
    loaded = netroots["uefi"].seen.get("kernel and initrd read")
    through_grub = sanboots["uefi"].seen.get("kernel and initrd read") if "uefi" in sanboots else None
    if loaded is not None and through_grub is not None:
        report(f"  kernel and initrd loaded {loaded:.1f} s after choosing the disk by netroot (iPXE over HTTPS from "
               f"the broker), {through_grub:.1f} s by sanboot (GRUB through iPXE's SAN hook)")


def test_her_os_rides_out_a_power_cut_of_the_server(
    broker: BrokerDeployment, lab: Lab, workstations: dict[str, IpxeClient]
) -> None:
    # Last in the module and in the lab run: the server VM's tmpfs root (accounts, configuration) is lost.
    helper, running_os = broker.helper, workstations["uefi"]
    assert running_os.process is not None, "the first test left no running OS"
    beats_on(running_os, len(running_os.screen()), count=1)
    synced = heartbeats(running_os)[-1]  # printed only once written and synced
    lab.power_cut()
    cut = len(running_os.screen())
    helper.process = broker.process = None
    prepare_accounts(lab)
    helper.install()
    helper.start()  # LIO is empty: the session records bring the target and her ACL back
    broker.install()
    broker.start()
    assert helper.problems() == []
    # Her OS's iscsid logs in again with the iBFT's credentials, within the image's 600 s, and goes on.
    beats_on(running_os, cut, count=2, timeout=540)
    on_the_disk = on_disk(helper, "student1", "/var/lib/lab/heartbeat")
    assert on_the_disk is not None and int(on_the_disk) >= synced  # what it synced before the cut is on the disk
