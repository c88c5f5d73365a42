"""The lab demo: the helper on real LIO and the HTTPS broker with real PAM in the VM, curl playing the
workstation's iPXE, and a real iSCSI client using the credentials the boot script carries.

What `scripts/lab demo` runs. Each step prints what happens, as an admin watching would see it.
"""

from __future__ import annotations

import subprocess
import sys

from .broker import BrokerDeployment, grant_from_script
from .deployment import Deployment, Grant, clear_lio, iscsi_tool, prepare_accounts, qemu_io
from .vm import Lab

STORE = "/srv/btrfs/bootbroker"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(done: subprocess.CompletedProcess[str]) -> None:
    for line in (done.stdout + done.stderr).strip().splitlines():
        print(f"   | {line}")


def script(text: str, secret: str | None = None) -> None:
    for line in text.strip().splitlines():
        if not line.startswith("#") and line.strip():
            print(f"   > {line.replace(secret, secret[:3] + '*' * (len(secret) - 3)) if secret else line}")


def masked(grant: Grant) -> str:
    return f"target {grant.target_iqn}\n   initiator {grant.initiator_iqn}\n   CHAP user {grant.chap_user}, " \
           f"secret {grant.chap_secret[:3]}{'*' * (len(grant.chap_secret) - 3)}"


def run_demo(lab: Lab) -> int:
    say("preparing the VM: accounts, configuration, helper (root) on the real kernel LIO")
    prepare_accounts(lab)
    clear_lio(lab)
    helper = Deployment(lab, "reflink", STORE)
    helper.install()
    helper.start()
    say("publishing a 16 MiB golden image 'demo' (version 1)")
    golden = helper.publish_random_golden("demo")
    print(f"   sha256 {golden}")

    say("alice logs in at a workstation: the helper makes her overlay, a target and a fresh CHAP secret")
    first = helper.ensure_session("alice")
    print(f"   {masked(first)}")
    say("the workstation logs in over iSCSI with those credentials (libiscsi iscsi-readcapacity16)")
    show(iscsi_tool(lab, "iscsi-readcapacity16", first))
    say("it writes to its disk (qemu-io over iSCSI); the golden image does not change")
    show(qemu_io(lab, first, "write -P 0x42 0 1M", "read -P 0x42 0 1M"))
    print(f"   golden sha256 unchanged: {helper.golden_sha256('demo') == golden}")

    say("alice logs in at a second workstation: new credentials, the first session is dropped")
    second = helper.ensure_session("alice")
    print(f"   {masked(second)}")
    old = iscsi_tool(lab, "iscsi-inq", first)
    print(f"   old credentials: {'refused' if old.returncode else 'ACCEPTED (wrong!)'}")
    show(qemu_io(lab, second, "read -P 0x42 0 1M"))

    say("the helpdesk lists sessions")
    print(helper.cli("sessions", user="deskstaff").stdout.rstrip())
    say("the helpdesk resets alice's disk (the old overlay is kept as a backup)")
    print("   " + helper.cli("reset", "alice", "demo", user="deskstaff").stdout.strip())
    fresh = helper.ensure_session("alice")
    pattern = qemu_io(lab, fresh, "read -P 0x42 0 1M")
    print(f"   after the reset her disk is the golden image again: {'Pattern verification failed' in pattern.stdout}")
    broker_story(helper)
    helper.stop()
    clear_lio(lab)
    say("done: the VM powers off")
    return 0


def broker_story(helper: Deployment) -> None:
    say("starting the broker (HTTPS, unprivileged user brokersvc, real PAM) with lab accounts student1, student2")
    broker = BrokerDeployment(helper)
    broker.install()
    broker.start()
    for line in broker.log().splitlines():
        if "fingerprint" in line or "certificate" in line.lower():
            print(f"   | {line.strip()}")
    say("a workstation's iPXE fetches the entry script (curl plays iPXE here; the next step uses a real one)")
    script(broker.curl("/boot.ipxe").body)
    say("student1 types a wrong password: the broker answers 401 and the screen shows why")
    wrong = broker.login("student1", "a-wrong-password")
    print(f"   HTTP {wrong.status} after {wrong.seconds:.2f} s")
    script(broker.curl("/message.ipxe").body)
    say("student1 logs in (PAM checks /etc/shadow): the menu of the disks she may boot")
    menu = broker.login("student1")
    print(f"   HTTP {menu.status} in {menu.seconds * 1000:.0f} ms")
    script(menu.body)
    say("she picks 'demo': the helper makes her overlay and target; the boot script carries fresh CHAP credentials")
    boot = broker.boot(menu.body)
    grant = grant_from_script(boot.body)
    print(f"   HTTP {boot.status} in {boot.seconds * 1000:.0f} ms")
    script(boot.body, grant.chap_secret)
    say("the credentials from the script log in to her target (libiscsi iscsi-inq)")
    inquiry = iscsi_tool(helper.lab, "iscsi-inq", grant)
    print("\n".join(f"   | {line}" for line in inquiry.stdout.splitlines() if line.startswith(("Vendor", "Product"))))
    print(f"   iscsi-inq exit status {inquiry.returncode}")
    broker.stop()


def main() -> int:
    with Lab() as lab:
        return run_demo(lab)


if __name__ == "__main__":
    sys.exit(main())
