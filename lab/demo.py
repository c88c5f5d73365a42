"""The lab demo, what `scripts/lab demo` runs: a person's own Debian, on any workstation, with real parts.

The server is the lab VM: the helper as root on the kernel's LIO, the broker as the unprivileged
`brokersvc` with real PAM. The golden image is a real Debian 12 made by `bootbroker images build`
(lab/realos.py: built on this host once, then cached), published with `images publish`. The workstations
are qemu VMs on this host, UEFI (OVMF) and BIOS (SeaBIOS), that PXE-boot the site's iPXE (2.0.0, built by
ipxe/build.py to trust the broker's certificate) by DHCP and TFTP on a restricted user network reaching
only the broker's HTTPS and iSCSI ports, and log in over HTTPS. A person's keystrokes
are typed into them; the transcript shows the lines of their screens that tell the story (a booting Linux
prints hundreds). Her "file" is the boot counter the image's unit keeps on her disk (lab/os-customize):
the OS itself writes it, so the number it prints says whose disk, and what state of it, booted.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from . import realos
from .broker import HTTPS_URL, BrokerDeployment, lab_tls
from .deployment import Deployment, clear_lio, prepare_accounts, refused_logins
from .ipxe_client import LOGIN_FORM, PROGRESS_EVERY, PXE_FILES, IpxeClient
from .timeline import Timeline
from .vm import CLIENT_SIDE, Lab

STORE = "/srv/btrfs/bootbroker"
USER = "student1"
# The lines of a booting workstation's screen that tell the story: iPXE's SAN boot, the bootloader, the
# kernel, the initramfs's own iSCSI login, the root, systemd, the OS's marker and its login prompt.
STORY = re.compile(
    r"Registered SAN device|Booting from SAN|^GNU GRUB +version|Linux version|iSCSI Initiator over TCP/IP|"
    r"EXT4-fs \(sd\w+\): mounted|Welcome to Debian|lab-os: multi-user|lab-os login|"
    r"detected conn error|I/O error|Remounting filesystem read-only"
)

READ_ONLY = re.compile(r"Remounting filesystem read-only")  # where a fenced OS's story ends: it repeats from there


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def note(text: str) -> None:
    print(f"   {text}", flush=True)


def server(text: str) -> None:
    for line in text.strip().splitlines():
        print(f"   server| {line}", flush=True)


@contextmanager
def ticking(what: str) -> Iterator[None]:
    """Say every PROGRESS_EVERY seconds that `what` is still going on."""
    done = threading.Event()
    began = time.monotonic()

    def tick() -> None:
        while not done.wait(PROGRESS_EVERY):
            note(f"... {what} ({time.monotonic() - began:.0f} s)")

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class Screen:
    """Prints what one workstation's screen shows since the last time: every line, or those `only` matches,
    up to the first that `last` matches (the rest is counted, not printed)."""

    def __init__(self, client: IpxeClient) -> None:
        self.client = client
        self.shown = 0

    def show(self, only: re.Pattern[str] | None = None, upto: int | None = None,
             last: re.Pattern[str] | None = None) -> None:
        end = len(self.client.screen()) if upto is None else upto
        lines = [line for line in self.client.transcript(self.shown, end) if only is None or only.search(line)]
        for count, line in enumerate(lines, 1):
            print(f"   {self.client.dir.name}| {line[:110]}", flush=True)
            if last is not None and last.search(line) and count < len(lines):
                print(f"   {self.client.dir.name}| ... and {len(lines) - count} more such lines", flush=True)
                break
        self.shown = end


def workstation(lab: Lab, name: str, firmware: str) -> tuple[IpxeClient, Screen]:
    client = IpxeClient(lab, name, firmware=firmware, memory_mb=1024)
    client.progress = lambda line: note(f"... {line}")
    return client, Screen(client)


def boot_her_disk(client: IpxeClient, screen: Screen, at: int) -> int:
    """At the disk menu, take the first disk; show the boot's story and its phases; returns her boot count."""
    chosen = at
    timeline = Timeline(client.screen, after=chosen)
    timeline.start()
    client.keys("ret")
    try:
        at = client.wait_for(realos.MARKER, after=chosen, timeout=realos.OS_BOOT)
    finally:
        timeline.stop()
    try:  # the serial console's login prompt (root logs in by itself there: the lab's image)
        client.wait_for("lab-os login", after=chosen, timeout=60)
    except AssertionError:
        pass  # not shown yet: the story does not depend on it
    screen.show(STORY)
    for line in timeline.table(f"{client.dir.name} ({client.firmware.upper()}) from choosing the disk:").splitlines():
        note(line)
    (count, root, target, _), = realos.boots(client.screen()[at - len(realos.MARKER):])
    note(f"her OS runs with its root {root} on {target}: boot {count} of this disk")
    return count


def run_demo(lab: Lab) -> int:
    say("the server VM: lab accounts, the helper (root) on the kernel's LIO, a reflink store on btrfs")
    prepare_accounts(lab)
    clear_lio(lab)
    helper = Deployment(lab, "reflink", STORE, advertise=f"{CLIENT_SIDE}:3260")
    helper.install()
    helper.start()
    broker: BrokerDeployment | None = None
    clients: list[IpxeClient] = []
    try:
        say("the golden image: Debian 12 made by `bootbroker images build` from Debian's packages (cached)")
        image = realos.ensure_os_image()
        note(f"{image} ({image.stat().st_blocks * 512 >> 20} MiB written of {image.stat().st_size >> 30} GiB)")
        say("the admin publishes it as 'demo': images check reads it first, then it becomes version 1")
        with ticking("publishing: checking, copying and checksumming the image in the server VM"):
            server(helper.cli("images", "publish", "demo", str(image), timeout=900).stdout)

        say("the site's iPXE: ipxe/build.py builds iPXE 2.0.0 from its release tarball, to chain the broker's")
        note(f"{HTTPS_URL}/boot.ipxe and to trust the broker's certificate only (cached after the first build)")
        with ticking("building iPXE (2-3 minutes the first time)"):
            tls = lab_tls()
        note(f"{tls.ipxe}: " + ", ".join(f"{name} ({(tls.ipxe / name).stat().st_size:,} bytes)" for name in PXE_FILES.values()))
        note(f"trusting {tls.certificate.certificate.name}, SHA-256 {tls.certificate.fingerprint[:23]}...")

        say("starting the broker as brokersvc with real PAM (/etc/pam.d/bootbroker, pam_unix) and lab accounts,")
        note("on HTTPS with that certificate (the site copies its own into /var/lib/bootbroker/tls)")
        broker = BrokerDeployment(helper, url=HTTPS_URL, tls=tls)
        broker.install()
        broker.start()
        server("\n".join(line for line in broker.log().splitlines() if "broker ready" in line or "fingerprint" in line))
        password = broker.passwords[USER]

        first, screen = workstation(lab, "workstation-1", "uefi")
        clients.append(first)
        say("workstation-1 (UEFI) powers on and netboots: its firmware's PXE gets ipxe.efi by DHCP and TFTP;")
        note("the site's iPXE runs its embedded script and gets the broker's entry menu over HTTPS; 'Log in'")
        first.pxe_boot(tls.ipxe)
        at = first.choose_log_in()
        screen.show()
        say(f"{USER} types her name and a wrong password")
        first.fill_in(USER, "not-her-password")
        at = first.wait_for(LOGIN_FORM, after=first.wait_for("Wrong user name or password.", after=at), timeout=60)
        screen.show()
        note("nothing was made for her: the helper was not even asked")
        say("she types her password again (her name is kept): the broker shows the disks she may boot")
        first.fill_in(None, password)
        at = first.wait_for(f"{USER}: choose your disk", after=at)
        screen.show()
        say("she takes the first: the helper makes her overlay and target with a fresh CHAP secret, iPXE logs")
        note("in and sanboots it, GRUB reads the kernel through iPXE, the initramfs logs in again from the iBFT:")
        boot_her_disk(first, screen, at)
        server(helper.cli("sessions").stdout)
        (left_on,) = helper.initiators(helper.target_iqn("demo", USER))

        second, second_screen = workstation(lab, "workstation-2", "bios")
        clients.append(second)
        say("she leaves workstation-1 running and logs in at workstation-2 (BIOS): her disk follows her, and")
        note("one writer per disk: the new login rotates the secret and drops workstation-1's session")
        second.pxe_boot(tls.ipxe)
        at = second.log_in(USER, password)
        taken = len(first.screen())
        before = realos.heartbeats(first.screen())
        boot_her_disk(second, second_screen, at)
        note("boot 2: the count workstation-1's OS wrote on her disk is there")
        for initiator, logged_in in helper.initiators(helper.target_iqn("demo", USER)).items():
            server(f"LIO allows only {initiator} (logged in: {'yes' if logged_in else 'no'})")

        say("what workstation-1's OS sees: its iSCSI session is gone; its iscsid logs in again with the old")
        note("keys, to the fence her login left it: an ACL that maps no LUN, so it finds no disk and stops")
        note("retrying (a refused login would be retried every few seconds for as long as it runs)")
        fenced = helper.logged_in_to_fence(helper.target_iqn("demo", USER), left_on, timeout=180)
        screen.show(STORY, upto=len(first.screen()), last=READ_ONLY)
        after = realos.heartbeats(first.screen()[taken:])
        note(f"its heartbeats (it writes and syncs a counter every 10 s): {len(before)} before her login at "
             f"workstation-2, {len(after)} after it")
        server(f"LIO: {left_on} " + ("logged in to its fence" if fenced else "not logged in again yet")
               + f"; logins of it refused: {len(refused_logins(lab, left_on))}")
        note("its writes failed at once and its root went read-only: it can read and write nothing of her")
        note("disk. The demo switches it off.")
        first.stop()

        say("she shuts workstation-2 down at the end of the day (the demo pulls its plug: what her OS synced")
        note("is on her disk). She asks the helpdesk for a fresh disk; the helpdesk (a member of")
        note("bootbroker-helpdesk, not root) lists the sessions and resets her disk; the old one is kept")
        second.stop()
        server(helper.cli("sessions", user="deskstaff").stdout)
        server(helper.cli("reset", USER, "demo", user="deskstaff").stdout)
        server(helper.cli("backups", user="deskstaff").stdout)

        third, third_screen = workstation(lab, "workstation-3", "uefi")
        clients.append(third)
        say("she logs in at workstation-3 (UEFI): a fresh copy of the golden image, boot 1 again")
        third.pxe_boot(tls.ipxe)
        boot_her_disk(third, third_screen, third.log_in(USER, password))
        note("(`bootbroker restore student1 demo` would bring back the disk the reset set aside)")
        say("done: the workstations are off; the broker and the helper stop, LIO is cleared, the VM powers off")
        return 0
    finally:
        for client in clients:
            client.stop()
        if broker is not None and broker.process is not None:
            broker.stop()
        helper.stop()
        clear_lio(lab)


def main() -> int:
    with Lab() as lab:
        return run_demo(lab)


if __name__ == "__main__":
    sys.exit(main())
