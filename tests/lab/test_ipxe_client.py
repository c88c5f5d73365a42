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
from lab.broker import BrokerDeployment, running
from lab.deployment import Deployment, refused_logins
from lab.ipxe_client import IpxeClient
from lab.vm import CLIENT_SIDE, Lab

STORE = "/srv/btrfs/bootbroker-ipxe"


def publish_bootable_golden(helper: Deployment) -> None:
    golden.build(helper.lab, "/tmp/golden-bootable.img")
    helper.cli("images", "publish", "demo", "/tmp/golden-bootable.img", "--no-check")  # EXTLINUX, no iSCSI root


@pytest.fixture(scope="module")
def broker(lab: Lab) -> Iterator[BrokerDeployment]:
    with running(lab, STORE, advertise=f"{CLIENT_SIDE}:3260", publish=publish_bootable_golden,
                 insecure_http=True, url=f"http://{CLIENT_SIDE}:8080") as deployed:
        yield deployed


@pytest.fixture
def client(lab: Lab) -> Iterator[IpxeClient]:
    workstation = IpxeClient(lab)
    try:
        yield workstation
    finally:
        workstation.stop()


def boot(client: IpxeClient, broker: BrokerDeployment, user: str) -> int:
    """A fresh workstation: log in as `user`, boot the default image, up to the disk's `boot:` prompt."""
    client.start(f"{broker.url}/boot.ipxe")
    return client.boot_first_disk(client.log_in(user, broker.passwords[user]))


def boot_and_read_mark(client: IpxeClient, broker: BrokerDeployment, user: str) -> str:
    """Boot as `user`, return the mark line the disk prints, power the workstation off."""
    at = boot(client, broker, user)
    mark = golden.shown_mark(client.screen()[:at])
    client.command("off")
    client.wait_for_exit()
    return mark


def test_a_wrong_password_at_a_real_ipxe_shows_the_message_and_the_login_prompt_again(
    broker: BrokerDeployment, client: IpxeClient
) -> None:
    before = broker.helper.snapshot()  # the store's files and LIO's whole tree
    client.start(f"{broker.url}/boot.ipxe")
    at = client.choose_log_in()
    client.fill_in("student1", "not-the-password")
    at = client.wait_for("Wrong user name or password.", after=at)
    at = client.wait_for("Username:", after=at, timeout=60)  # back at the login prompt, name kept
    # The wrong password reached no target: no overlay, target, ACL or session was made or touched.
    assert broker.helper.snapshot() == before
    client.fill_in(None, broker.passwords["student1"])
    client.wait_for("student1: choose your disk", after=at)
    assert broker.passwords["student1"] not in client.screen()  # typed, never shown
    assert "login_failed: login of student1 from " in broker.log()  # the typed name, escaped (identifiers.loggable)


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


def test_one_writer_a_second_workstation_of_the_same_user_takes_the_disk_and_the_os_gets_the_ibft(
    broker: BrokerDeployment, lab: Lab
) -> None:
    helper = broker.helper
    target = helper.target_iqn("demo", "student1")
    first, second = IpxeClient(lab, "writer-1"), IpxeClient(lab, "writer-2")
    try:
        boot(first, broker, "student1")
        (first_initiator, logged_in), = helper.initiators(target).items()
        assert logged_in  # the first workstation is on its disk, waiting at the disk's prompt

        at = boot(second, broker, "student1")  # the same user at another workstation
        (second_initiator, logged_in), = helper.initiators(target).items()
        assert second_initiator != first_initiator and logged_in  # the first one's ACL is gone

        before = len(first.screen())
        first.command("show")  # the first workstation reads its disk again: cat.c32, mark.txt
        # iPXE logs in again with its old keys, to the fence the takeover left it: an ACL that maps no LUN.
        assert helper.logged_in_to_fence(target, first_initiator, timeout=120)
        assert "mark" not in first.screen()[before:]  # and it read nothing from the disk
        assert refused_logins(lab, first_initiator) == []  # nor was it refused (each refusal is a log line)

        second.command("ibft")  # the OS on the disk: what iPXE told it in the iBFT
        at = second.wait_for("golden OS: powering off", after=at, timeout=300)
        assert second.wait_for_exit() == 0
        ibft = second.screen()
        assert f"iBFT initiator {second_initiator}" in ibft
        assert f"iBFT target {target} lun" in ibft
        assert f"iBFT portal {CLIENT_SIDE}:3260" in ibft
        assert "iBFT CHAP user student1" in ibft
        assert broker.passwords["student1"] not in ibft
    finally:
        first.stop()
        second.stop()
