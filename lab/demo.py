"""The lab demo: the helper on real LIO in the VM, and a real iSCSI client using what it hands out.

What `scripts/lab demo` runs. Each step prints what happens, as an admin watching would see it.
"""

from __future__ import annotations

import subprocess
import sys

from .deployment import Deployment, Grant, clear_lio, iscsi_tool, prepare_accounts, qemu_io
from .vm import Lab

STORE = "/srv/btrfs/bootbroker"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(done: subprocess.CompletedProcess[str]) -> None:
    for line in (done.stdout + done.stderr).strip().splitlines():
        print(f"   | {line}")


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
    helper.stop()
    clear_lio(lab)
    say("done: the VM powers off")
    return 0


def main() -> int:
    with Lab() as lab:
        return run_demo(lab)


if __name__ == "__main__":
    sys.exit(main())
