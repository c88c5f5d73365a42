"""The lab demo, what `scripts/lab demo` runs: the whole story with real parts and a real netboot client.

The server is the lab VM: the helper as root on the kernel's LIO, the broker as the unprivileged
`brokersvc` with real PAM. The workstations are qemu VMs on this host that netboot Debian 12's iPXE from
their network card, on a restricted user network that reaches only the broker and iSCSI ports. A person's
keystrokes are typed into them; the transcript shows what their screens show, step by step.
"""

from __future__ import annotations

import sys
import time

from . import golden
from .broker import BrokerDeployment
from .deployment import Deployment, clear_lio, prepare_accounts, refused_logins
from .ipxe_client import CLIENT_SIDE, IpxeClient
from .vm import Lab

STORE = "/srv/btrfs/bootbroker"
GOLDEN_FILE = "/tmp/golden-demo.img"
USER = "student1"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def note(text: str) -> None:
    print(f"   {text}", flush=True)


def server(text: str) -> None:
    for line in text.strip().splitlines():
        print(f"   server| {line}", flush=True)


class Screen:
    """Prints what one workstation's screen shows since the last time."""

    def __init__(self, client: IpxeClient) -> None:
        self.client = client
        self.shown = 0

    def show(self) -> None:
        end = len(self.client.screen())
        for line in self.client.transcript(self.shown, end):
            print(f"   {self.client.dir.name}| {line}", flush=True)
        self.shown = end


def workstation(lab: Lab, name: str) -> IpxeClient:
    client = IpxeClient(lab, name)
    client.progress = lambda line: note(f"... {line}")
    return client


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
        say("building a small bootable golden image (MBR, EXTLINUX, a Debian kernel) and publishing it as 'demo'")
        golden.build(lab, GOLDEN_FILE)
        server(helper.cli("images", "publish", "demo", GOLDEN_FILE, "--no-check").stdout)

        say("starting the broker as brokersvc with real PAM (/etc/pam.d/bootbroker, pam_unix) and lab accounts")
        note("plain HTTP, the lab-only insecure_http switch: Debian 12's iPXE has no HTTPS. Debian 13's iPXE")
        note("negotiating TLS with this broker is shown by tests/lab/test_ipxe_tls.py.")
        broker = BrokerDeployment(helper, insecure_http=True, url=f"http://{CLIENT_SIDE}:8080")
        broker.install()
        broker.start()
        server("\n".join(line for line in broker.log().splitlines() if "broker ready" in line))

        first = workstation(lab, "workstation-1")
        clients.append(first)
        screen = Screen(first)
        say("workstation-1 powers on and netboots: its iPXE gets the broker's entry menu; 'Log in' is chosen")
        first.start(f"{broker.url}/boot.ipxe")
        at = first.choose_log_in()
        screen.show()
        say(f"{USER} types her name and a wrong password")
        first.fill_in(USER, "not-her-password")
        at = first.wait_for("Username:", after=first.wait_for("Wrong user name or password.", after=at), timeout=60)
        screen.show()
        note("nothing was made for her: the helper was not even asked")
        say("she types her password again (her name is kept): the broker shows the disks she may boot")
        first.fill_in(None, broker.passwords[USER])
        at = first.wait_for(f"{USER}: choose your disk", after=at)
        screen.show()
        say("she takes the first: the helper makes her overlay and target with a fresh CHAP secret; iPXE logs in")
        note("with it over iSCSI and boots her disk, whose EXTLINUX shows its mark.txt and waits at boot:")
        first.boot_first_disk(at)
        screen.show()
        server(helper.cli("sessions").stdout)
        say("she shuts down (types 'off'); her work is on her overlay (here the demo writes her mark.txt)")
        first.command("off")
        first.wait_for_exit()
        screen.show()
        golden.set_mark(lab, f"{helper.overlay_dir('demo', USER)}/disk.img", f"{USER}'s homework, saved on her disk")

        second = workstation(lab, "workstation-2")
        clients.append(second)
        second_screen = Screen(second)
        say(f"the next day {USER} logs in at workstation-2: her own disk follows her")
        second.start(f"{broker.url}/boot.ipxe")
        second.boot_first_disk(second.log_in(USER, broker.passwords[USER]))
        second_screen.show()
        (left_on,) = helper.initiators(helper.target_iqn("demo", USER))

        third = workstation(lab, "workstation-3")
        clients.append(third)
        screen = Screen(third)
        say("she leaves workstation-2 on and logs in at workstation-3: one writer per disk, so that one is dropped")
        third.start(f"{broker.url}/boot.ipxe")
        third.boot_first_disk(third.log_in(USER, broker.passwords[USER]))
        screen.show()
        for initiator, logged_in in helper.initiators(helper.target_iqn("demo", USER)).items():
            server(f"LIO allows only {initiator} (logged in: {'yes' if logged_in else 'no'})")
        say("workstation-2 tries to read its disk again ('show'): LIO refuses its old credentials")
        second.command("show")
        deadline = time.monotonic() + 120
        while not (refusals := refused_logins(lab, left_on)) and time.monotonic() < deadline:
            time.sleep(2)
        second_screen.show()
        server(refusals[0] if refusals else "no refusal within 120 s (unexpected)")
        note("its screen stays as it is: its iPXE keeps retrying the old login; the demo switches it off")
        second.stop()

        say("on workstation-3 she boots the OS on her disk ('ibft'): it finds the iBFT iPXE left for it")
        third.command("ibft")
        third.wait_for("golden OS: powering off", timeout=300)
        third.wait_for_exit()
        screen.show()

        say("the helpdesk (a member of bootbroker-helpdesk) lists the sessions and resets her disk")
        server(helper.cli("sessions", user="deskstaff").stdout)
        server(helper.cli("reset", USER, "demo", user="deskstaff").stdout)
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
