"""A real operating system on the user's own disk: Debian 12 built by `bootbroker images build`, booted by
real iPXE workstations, BIOS (SeaBIOS) and UEFI (OVMF), from the user's overlay through LIO.

iPXE logs in and `sanboot`s; GRUB reads the kernel and initramfs through iPXE's SAN hook; the initramfs's
open-iscsi logs in again with what the iBFT says (this boot session's initiator name and CHAP secret);
systemd reaches multi-user and the lab's unit (lab/os-customize) counts the boot in a file on the root
filesystem, synced, and prints it on the serial console. One scenario serves several checks, since each
boot costs minutes under TCG.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from lab import realos
from lab.broker import BrokerDeployment, running
from lab.deployment import Deployment, refused_logins
from lab.ipxe_client import CLIENT_SIDE, IpxeClient
from lab.vm import Lab

STORE = "/srv/btrfs/bootbroker-os"
OS_BOOT = 900.0  # seconds from the disk menu to multi-user under TCG, with room to spare


@pytest.fixture(scope="module")
def broker(lab: Lab) -> Iterator[BrokerDeployment]:
    image = realos.ensure_os_image()

    def publish(helper: Deployment) -> None:
        helper.cli("images", "publish", "demo", str(image), timeout=900)

    with running(lab, STORE, advertise=f"{CLIENT_SIDE}:3260", publish=publish,
                 insecure_http=True, url=f"http://{CLIENT_SIDE}:8080") as deployed:
        yield deployed


def boot_os(workstation: IpxeClient, broker: BrokerDeployment, user: str) -> tuple[int, str, str, str]:
    """Log in as `user` at a fresh workstation, boot the first disk, wait for the OS's marker line."""
    workstation.start(f"{broker.url}/boot.ipxe")
    at = workstation.log_in(user, broker.passwords[user])
    workstation.keys("ret")
    at = workstation.wait_for("Registered SAN device 0x80", after=at)
    at = workstation.wait_for(realos.MARKER, after=at, timeout=OS_BOOT)
    (marked,) = realos.boots(workstation.screen()[at - len(realos.MARKER):])
    return marked


def test_the_users_own_os_boots_bios_and_uefi_keeps_its_writes_and_one_writer_takes_over(
    broker: BrokerDeployment, lab: Lab
) -> None:
    helper = broker.helper
    target = helper.target_iqn("demo", "student1")
    first = IpxeClient(lab, "os-bios", firmware="bios", memory_mb=1024)
    second = IpxeClient(lab, "os-uefi", firmware="uefi", memory_mb=1024)
    try:
        # BIOS: the OS runs from student1's overlay and writes its first boot there.
        count, root, booted_target, recovery = boot_os(first, broker, "student1")
        assert (count, booted_target) == (1, target)
        assert root.startswith("/dev/sd")  # the iSCSI disk, found by UUID
        assert recovery == "600"  # the image's udev rule gave the initramfs's session the long timeout
        (first_initiator, logged_in), = helper.initiators(target).items()
        assert logged_in  # the OS's own session from the iBFT: the same ACL iPXE used

        # UEFI, another workstation, the same user: her disk, with the first OS's write in it (boot 2); the
        # first workstation's ACL is gone, so it can write nothing more.
        count, _, booted_target, _ = boot_os(second, broker, "student1")
        assert (count, booted_target) == (2, target)
        (second_initiator, logged_in), = helper.initiators(target).items()
        assert second_initiator != first_initiator and logged_in
        # The first OS notices (its NOPs or its next write) and its iscsid tries to log in again: refused.
        deadline = time.monotonic() + 180
        while not refused_logins(lab, first_initiator) and time.monotonic() < deadline:
            time.sleep(5)
        assert refused_logins(lab, first_initiator), "the taken-over OS never tried to log in again"
    finally:
        first.stop()
        second.stop()

    # Another user boots the golden image's own state: her first boot, not student1's third.
    other = IpxeClient(lab, "os-other", firmware="bios", memory_mb=1024)
    try:
        count, _, booted_target, _ = boot_os(other, broker, "student2")
        assert (count, booted_target) == (1, helper.target_iqn("demo", "student2"))
    finally:
        other.stop()
