"""The broker in the lab: real PAM accounts, the real helper on real LIO, curl as the workstation.

The login -> menu -> boot conversation over HTTPS returns a sanboot script whose CHAP credentials log in
to the real target with libiscsi; wrong or absent credentials get the clear-message scripts.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import pytest

from lab.broker import BrokerDeployment, grant_from_script
from lab.deployment import Deployment, clear_lio, iscsi_tool, prepare_accounts
from lab.vm import Lab

STORE = "/srv/btrfs/bootbroker-web"


@pytest.fixture(scope="module")
def broker(lab: Lab) -> Iterator[BrokerDeployment]:
    prepare_accounts(lab)
    clear_lio(lab)
    helper = Deployment(lab, "reflink", STORE)
    helper.install()
    helper.start()
    helper.publish_random_golden("demo")
    deployed = BrokerDeployment(helper)
    deployed.install()
    deployed.start()
    yield deployed
    if deployed.process is not None:
        deployed.stop()
    helper.stop()
    clear_lio(lab)


def test_curl_login_boots_with_working_chap_credentials(broker: BrokerDeployment) -> None:
    entry = broker.curl("/boot.ipxe")
    assert entry.status == 200 and entry.body.startswith("#!ipxe")
    assert f"${{username:uristring}}:${{password:uristring}}@{broker.url.split('://')[1]}/login.ipxe" in entry.body
    challenge = broker.curl("/login.ipxe")
    assert challenge.status == 401 and challenge.headers["WWW-Authenticate"].startswith("Basic ")

    menu = broker.login("student1")
    assert menu.status == 200, menu.body
    assert "item image-demo" in menu.body
    boot = broker.boot(menu.body)
    assert boot.status == 200, boot.body
    grant = grant_from_script(boot.body)
    assert grant.target_iqn.endswith(":demo.student1") and grant.chap_user == "student1"

    done = iscsi_tool(broker.lab, "iscsi-inq", grant)
    assert done.returncode == 0, done.stderr
    refused = iscsi_tool(broker.lab, "iscsi-inq", grant, secret="X" + grant.chap_secret[1:])
    assert refused.returncode != 0 and "Authentication failure" in refused.stderr


def test_wrong_and_absent_credentials_get_the_clear_message_scripts(broker: BrokerDeployment) -> None:
    wrong = broker.login("student2", "not-the-password")
    unknown = broker.login("nosuchuser", "not-the-password")
    for answer in (wrong, unknown):
        assert answer.status == 401
        assert "echo Wrong user name or password." in answer.body
        assert answer.seconds >= broker.failure_delay
    assert wrong.body == unknown.body
    message = broker.curl("/message.ipxe")
    assert message.status == 200 and "Wrong user name or password." in message.body
    assert "?then=login" in message.body  # back to the login prompt
    query = broker.curl("/login.ipxe?username=student2&password=x")
    assert query.status == 400 and "query string" in query.body


def test_a_locked_account_is_refused_by_pam(broker: BrokerDeployment) -> None:
    broker.lab.run(["usermod", "-L", "student2"])
    try:
        assert broker.login("student2").status == 401
    finally:
        broker.lab.run(["usermod", "-U", "student2"])
    assert broker.login("student2").status == 200


def test_post_form_login(broker: BrokerDeployment) -> None:
    menu = broker.login_form("student2", broker.passwords["student2"])
    assert menu.status == 200 and "item image-demo" in menu.body


def test_a_second_login_rotates_the_credentials(broker: BrokerDeployment) -> None:
    first = grant_from_script(broker.boot(broker.login("student2").body).body)
    second = grant_from_script(broker.boot(broker.login("student2").body).body)
    assert second.chap_secret != first.chap_secret and second.initiator_iqn != first.initiator_iqn
    assert iscsi_tool(broker.lab, "iscsi-inq", first).returncode != 0
    assert iscsi_tool(broker.lab, "iscsi-inq", second).returncode == 0


def test_each_user_boots_their_own_target_and_the_latency_is_printed(broker: BrokerDeployment) -> None:
    """Also prints figures for the README and the note (TCG emulation: compare, do not trust the absolute)."""
    logins, colds, warms, targets = [], [], [], set()
    for i in range(3):
        user = f"latency{i}"
        broker.lab.run(["useradd", "-M", "-U", user], check=False)
        broker.set_password(user, f"pw-latency-{i}-check")
        menu = broker.login(user)
        logins.append(menu.seconds)
        cold = broker.boot(menu.body)  # first boot: overlay + target
        colds.append(cold.seconds)
        targets.add(grant_from_script(cold.body).target_iqn)
        warm = broker.boot(broker.login(user).body)  # rotation only
        warms.append(warm.seconds)
        assert iscsi_tool(broker.lab, "iscsi-inq", grant_from_script(warm.body)).returncode == 0
    print(
        f"\nLATENCY (median of 3, ms): login (PAM) {statistics.median(logins) * 1000:.0f}, "
        f"boot cold {statistics.median(colds) * 1000:.0f}, boot warm {statistics.median(warms) * 1000:.0f}"
    )
    assert len(targets) == 3


def test_no_password_secret_or_token_in_the_broker_log(broker: BrokerDeployment) -> None:
    menu = broker.login("student1")
    script = broker.boot(menu.body).body
    grant = grant_from_script(script)
    token = menu.body.split("token=")[1].split()[0]
    log = broker.log()
    assert "login of student1" in log and "GET /boot/demo.ipxe" in log
    for secret in (*broker.passwords.values(), "not-the-password", grant.chap_secret, token):
        assert secret not in log
