"""A real iPXE (Debian 12's, in a client VM) talks to the broker: a person types at its login prompt, and
the workstation boots the user's own copy of a small bootable golden image (lab/golden.py).

The server side is the lab VM: the helper on real LIO and the broker with real PAM, over the lab-only
plain HTTP (Debian 12's iPXE has no HTTPS). The client VM reaches both through forwards on its own
restricted user network, so the helper advertises the portal the client sees.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import golden
from lab.broker import BrokerDeployment
from lab.deployment import Deployment, clear_lio, prepare_accounts
from lab.ipxe_client import CLIENT_SIDE, IpxeClient
from lab.vm import Lab

STORE = "/srv/btrfs/bootbroker-ipxe"


@pytest.fixture(scope="module")
def broker(lab: Lab) -> Iterator[BrokerDeployment]:
    prepare_accounts(lab)
    clear_lio(lab)
    helper = Deployment(lab, "reflink", STORE, advertise=f"{CLIENT_SIDE}:3260")
    helper.install()
    helper.start()
    golden.build(lab, "/tmp/golden-bootable.img")
    helper.cli("images", "publish", "demo", "/tmp/golden-bootable.img")
    deployed = BrokerDeployment(helper, insecure_http=True, url=f"http://{CLIENT_SIDE}:8080")
    deployed.install()
    deployed.start()
    try:
        yield deployed
    finally:
        try:
            if deployed.process is not None:
                deployed.stop()
        finally:
            helper.stop()
            clear_lio(lab)


@pytest.fixture
def client(lab: Lab) -> Iterator[IpxeClient]:
    workstation = IpxeClient(lab)
    try:
        yield workstation
    finally:
        workstation.stop()


def log_in(client: IpxeClient, broker: BrokerDeployment, user: str, at: int = 0) -> int:
    """From the entry menu: choose "Log in", type the user's name and password, wait for the menu."""
    at = client.wait_for("Boot the local disk", timeout=180, after=at)
    client.keys("up", "ret")  # from the default (local disk) to "Log in"
    at = client.wait_for("Username:", after=at)
    client.type(user)
    client.keys("tab")
    client.type(broker.passwords[user])
    client.keys("ret")
    return client.wait_for(f"{user}: choose your disk", after=at)


def boot_and_read_mark(client: IpxeClient, broker: BrokerDeployment, user: str) -> str:
    """A fresh workstation: log in, boot the default image, return the line its disk prints."""
    client.start(f"{broker.url}/boot.ipxe")
    at = log_in(client, broker, user)
    client.keys("ret")  # the default: the first image
    at = client.wait_for("Registered SAN device 0x80", after=at)  # iSCSI login with the script's CHAP
    at = client.wait_for("Booting from SAN device 0x80", after=at)
    client.wait_for("mark", after=at)
    client.wait_for_exit()  # the disk's SYSLINUX powers the workstation off after showing its mark
    screen = client.screen()[at:]
    return next(line.strip() for line in screen.splitlines() if "mark" in line)


def test_a_wrong_password_at_a_real_ipxe_shows_the_message_and_the_login_prompt_again(
    broker: BrokerDeployment, client: IpxeClient
) -> None:
    client.start(f"{broker.url}/boot.ipxe")
    at = client.wait_for("Boot the local disk", timeout=180)
    client.keys("up", "ret")
    at = client.wait_for("Username:", after=at)
    client.type("student1")
    client.keys("tab")
    client.type("not-the-password")
    client.keys("ret")
    at = client.wait_for("Wrong user name or password.", after=at)
    at = client.wait_for("Username:", after=at, timeout=60)  # back at the login prompt, name kept
    client.keys("tab")
    client.type(broker.passwords["student1"])
    client.keys("ret")
    client.wait_for("student1: choose your disk", after=at)
    assert broker.passwords["student1"] not in client.screen()  # typed, never shown
    assert "login_failed: login of 'student1'" in broker.log()


def test_each_user_boots_their_own_disk_and_it_persists(broker: BrokerDeployment, lab: Lab) -> None:
    first = IpxeClient(lab, "client-1")
    try:
        assert boot_and_read_mark(first, broker, "student1") == golden.NO_MARK
    finally:
        first.stop()
    overlay = f"{broker.helper.overlay_dir('demo', 'student1')}/disk.img"
    golden.set_mark(lab, overlay, "mark of student1")
    for name, user, expected in (("client-2", "student1", "mark of student1"),  # persistence
                                 ("client-3", "student2", golden.NO_MARK)):  # isolation
        workstation = IpxeClient(lab, name)
        try:
            assert boot_and_read_mark(workstation, broker, user) == expected
        finally:
            workstation.stop()
    assert "boot of demo by student2" in broker.log()
