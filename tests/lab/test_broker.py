"""The broker in the lab: real PAM accounts, the real helper on real LIO, curl as the workstation.

One helper (reflink on btrfs) and one broker (HTTPS, as the unprivileged brokersvc) for the module. The
login -> menu -> boot conversation returns a sanboot script whose CHAP credentials log in to the real
target with libiscsi; wrong, absent and refused credentials get the clear-message scripts; nothing secret
reaches the broker's log. Prints the measured latencies (TCG emulation: compare them, do not trust the
absolute figures).
"""

from __future__ import annotations

import hashlib
import re
import ssl
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

import pytest

from broker.web.boot import PUBLISHED_TTL
from lab.broker import SERVICE_ACCOUNT, Answer, BrokerDeployment, grant_from_script, running
from lab.deployment import iscsi_tool, reads_disk, wrong_secret
from lab.vm import Lab

STORE = "/srv/btrfs/bootbroker-web"
WRONG = "Wrong user name or password."


@pytest.fixture(scope="module")
def broker(lab: Lab) -> Iterator[BrokerDeployment]:
    with running(lab, STORE, publish=lambda helper: helper.publish_random_golden("demo")) as deployed:
        yield deployed


def test_the_broker_runs_unprivileged_with_the_certificate_it_generated(broker: BrokerDeployment) -> None:
    ps = broker.lab.run(["ps", "-eo", "user:16,supgrp:64,args"]).stdout
    serve = [line.split(None, 2) for line in ps.splitlines() if f"{broker.config} serve" in line]
    assert len(serve) == 1, ps
    user, groups, _ = serve[0]
    assert user == SERVICE_ACCOUNT and {"shadow"} <= set(groups.split(",")), serve
    key = broker.lab.run(["stat", "-c", "%a %U", broker.key]).stdout.split()
    assert key == ["600", SERVICE_ACCOUNT]
    # The fingerprint the broker printed (what an admin compares before building iPXE with TRUST=) is
    # that of the certificate curl verifies.
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(broker.cafile.read_text())).hexdigest().upper()
    assert ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)) in broker.log()
    health = broker.curl("/health")
    assert health.status == 200 and '"broker": "ok"' in health.body


def test_curl_login_boots_with_working_chap_credentials(broker: BrokerDeployment) -> None:
    entry = broker.curl("/boot.ipxe")
    assert entry.status == 200 and entry.body.startswith("#!ipxe\n")
    host = broker.url.split("://", 1)[1]
    assert f"https://${{username:uristring}}:${{password:uristring}}@{host}/login.ipxe" in entry.body
    challenge = broker.curl("/login.ipxe")
    assert challenge.status == 401 and challenge.headers["WWW-Authenticate"].startswith("Basic ")

    menu = broker.login("student1")
    assert menu.status == 200 and menu.body.startswith("#!ipxe\n"), menu.body
    assert "item image-demo" in menu.body and f"{broker.url}/boot/demo.ipxe?token=" in menu.body
    assert broker.passwords["student1"] not in menu.body
    boot = broker.boot(menu.body)
    assert boot.status == 200 and boot.body.startswith("#!ipxe\n"), boot.body
    grant = grant_from_script(boot.body)
    assert grant.target_iqn.endswith(":demo.student1") and grant.chap_user == "student1"
    assert grant.portals == ["10.0.2.15:3260"] and grant.lun == 0

    done = iscsi_tool(broker.lab, "iscsi-inq", grant)
    assert done.returncode == 0, done.stderr
    refused = iscsi_tool(broker.lab, "iscsi-inq", grant, secret=wrong_secret(grant.chap_secret))
    assert refused.returncode != 0 and "Authentication failure" in refused.stderr, refused.stderr


def test_wrong_and_absent_credentials_get_the_clear_message_scripts(broker: BrokerDeployment) -> None:
    wrong = broker.login("student2", "not-the-password")
    unknown = broker.login("nosuchuser", "not-the-password")
    for answer in (wrong, unknown):
        assert answer.status == 401 and answer.headers["WWW-Authenticate"].startswith("Basic ")
        assert f"echo {WRONG}" in answer.body
        assert answer.seconds >= broker.failure_delay  # the tarpit: same answer, same timing
    assert wrong.body == unknown.body
    # iPXE drops an error answer's body: the screen fetches the reason again.
    message = broker.curl("/message.ipxe")
    assert message.status == 200 and WRONG in message.body
    assert "/boot.ipxe?then=login" in message.body  # then back to the login prompt

    absent = broker.curl("/login.ipxe")
    assert absent.status == 401 and absent.headers["WWW-Authenticate"].startswith("Basic ")
    assert WRONG not in absent.body
    query = broker.curl("/login.ipxe?username=student2&password=x")
    assert query.status == 400 and "query string" in query.body


def test_pam_refuses_a_locked_and_an_expired_account(broker: BrokerDeployment) -> None:
    """The right password is not enough: PAM's auth stack refuses a locked account, its account stack an
    expired one. A fake authenticator could not tell; real pam_unix reading /etc/shadow does."""
    lab = broker.lab
    lab.run(["usermod", "-L", "student2"])
    try:
        locked = broker.login("student2")
    finally:
        lab.run(["usermod", "-U", "student2"])
    lab.run(["chage", "-E", "0", "student2"])
    try:
        expired = broker.login("student2")
    finally:
        lab.run(["chage", "-E", "-1", "student2"])
    for answer in (locked, expired):
        assert answer.status == 401 and f"echo {WRONG}" in answer.body
    assert broker.login("student2").status == 200
    refusals = [line for line in broker.log().splitlines() if "PAM refused student2" in line]
    assert any("expired" in line.lower() for line in refusals), refusals


def test_post_form_login(broker: BrokerDeployment) -> None:
    menu = broker.login_form("student2")
    assert menu.status == 200 and "item image-demo" in menu.body
    assert broker.boot(menu.body).status == 200
    wrong = broker.login_form("student2", "not-the-password")
    assert wrong.status == 401 and f"echo {WRONG}" in wrong.body


def test_a_second_login_rotates_the_credentials(broker: BrokerDeployment) -> None:
    first = grant_from_script(broker.boot(broker.login("student2").body).body)
    second = grant_from_script(broker.boot(broker.login("student2").body).body)
    assert second.target_iqn == first.target_iqn  # the same disk...
    assert second.chap_secret != first.chap_secret and second.initiator_iqn != first.initiator_iqn  # ...new keys
    assert not reads_disk(broker.lab, first)  # the old keys log in to a fence at most: no disk
    assert reads_disk(broker.lab, second)


def test_only_published_images_are_offered_and_one_retired_after_the_menu_fails_with_a_message(
    broker: BrokerDeployment
) -> None:
    """`other` is in the configuration but has no published version: the menu leaves it out. Once
    published it is offered; retired before the boot link is followed, the helper's refusal crosses the
    socket and becomes an error status and a script, not a traceback."""
    assert "item image-other" not in broker.login("student1").body
    broker.helper.publish_random_golden("other")
    time.sleep(PUBLISHED_TTL + 0.5)  # the broker's cached list of published images
    menu = broker.login("student1")
    assert "item image-other" in menu.body
    broker.helper.cli("images", "retire", "other")
    answer = broker.boot(menu.body, "other")
    assert answer.status == 404 and "That disk does not exist" in answer.body, (answer.status, answer.body)
    message = broker.curl("/message.ipxe")
    assert message.status == 200 and "That disk does not exist" in message.body
    log = broker.log()
    assert "image 'other' has no published version" in log  # the detail is for the log only
    assert "unexpected failure" not in log


def test_login_and_boot_latency(broker: BrokerDeployment) -> None:
    """Cold boot: the user's first (overlay + target + ACL); warm: a later login (new ACL only)."""
    logins, colds, warms, handshakes, targets = [], [], [], [], set()
    for i in range(3):
        user = f"latency{i}"
        broker.add_user(user)
        menu = broker.login(user)
        cold = broker.boot(menu.body)
        again = broker.login(user)
        warm = broker.boot(again.body)
        assert {menu.status, cold.status, again.status, warm.status} == {200}
        logins += [menu.seconds, again.seconds]
        colds.append(cold.seconds)
        warms.append(warm.seconds)
        handshakes += [a.tls_seconds for a in (menu, cold, again, warm)]
        targets.add(grant_from_script(cold.body).target_iqn)
        assert grant_from_script(warm.body).target_iqn == grant_from_script(cold.body).target_iqn
    assert len(targets) == 3  # each user their own target
    assert iscsi_tool(broker.lab, "iscsi-inq", grant_from_script(warm.body)).returncode == 0

    def ms(samples: list[float]) -> str:
        return f"{statistics.median(samples) * 1000:.0f}ms"

    print(
        f"\nLATENCY login={ms(logins)} boot_cold={ms(colds)} boot_warm={ms(warms)} "
        f"(medians of {len(logins)}/{len(colds)}/{len(warms)} curl time_total under TCG, each including a "
        f"TLS handshake of {ms(handshakes)})"
    )


def test_fifty_users_logging_in_at_once_all_boot(broker: BrokerDeployment) -> None:
    users = [f"class{i:02d}" for i in range(50)]
    broker.add_users(users)
    scripts: dict[str, Answer] = {}
    start = threading.Barrier(len(users))

    def log_in_and_boot(user: str) -> None:
        start.wait()
        menu = broker.login(user)
        scripts[user] = broker.boot(menu.body) if menu.status == 200 else menu

    began = time.monotonic()
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(log_in_and_boot, users))
    seconds = time.monotonic() - began
    assert sorted(user for user, answer in scripts.items() if answer.status == 200) == users, {
        user: (answer.status, answer.body) for user, answer in scripts.items() if answer.status != 200}
    grants = {user: grant_from_script(answer.body) for user, answer in scripts.items()}
    assert len({g.target_iqn for g in grants.values()}) == len(users)  # each her own disk
    assert broker.helper.problems() == []  # each target has exactly its user's one ACL
    for user in users[::10]:
        assert iscsi_tool(broker.lab, "iscsi-inq", grants[user]).returncode == 0, user
    print(f"\nSTORM {len(users)} users logged in and booted at once: all served in {seconds:.1f} s "
          f"(PAM, overlay, target, ACL each; TCG)")


def test_no_password_secret_or_token_in_the_broker_log(broker: BrokerDeployment) -> None:
    """Runs last: every password, CHAP secret and token the module used, and none is in the log."""
    menu = broker.login("student1")
    grant = grant_from_script(broker.boot(menu.body).body)
    assert grant.chap_secret in broker.secrets and broker.passwords["student1"] in broker.secrets
    assert any(secret in menu.body for secret in broker.secrets - set(broker.passwords.values()))  # a token
    log = broker.log()
    assert "login of student1" in log and "boot of demo by student1" in log
    assert "login of student2" in log and "GET /boot/demo.ipxe" in log
    leaked = sorted(secret for secret in broker.secrets if secret in log)
    assert not leaked, f"{len(leaked)} secret(s) in the broker's log"
    helper_log = broker.helper.log()
    assert not [secret for secret in broker.secrets if secret in helper_log], "a secret in the helper's log"


def test_metrics_from_the_broker_and_the_real_helper(broker: BrokerDeployment) -> None:
    boot = broker.boot(broker.login("student2").body)
    assert boot.status == 200
    text = broker.curl("/metrics").body

    def metric(name: str) -> float:
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert found is not None, f"no {name} in:\n{text}"
        return float(found[1])

    assert metric('bootbroker_logins_total{result="ok"}') >= 1
    assert metric("bootbroker_ensure_session_seconds_count") >= 1
    assert metric("bootbroker_helper_up") == 1
    assert metric("bootbroker_live_sessions") >= 1 and metric("bootbroker_overlays") >= 1
    assert metric("bootbroker_store_free_bytes") > 0
    assert "student2" not in text
