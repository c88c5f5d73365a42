"""The web layer with fake ports: the whole iPXE conversation, every failure's status and message."""

from __future__ import annotations

import base64
import logging
import re
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.web.boot import BootFlow
from broker.shared.config import Config
from broker.shared.errors import BackendFailure, StoreFull
from broker.web.limiter import LoginLimiter
from broker.web.metrics import Metrics
from broker.web.scripts import ScriptRenderer
from broker.web.tokens import TokenSigner
from broker.web.app import HANDLER_LIMITS, AccessLogger, make_app

from .webfakes import CHAP_SECRET, DOWN, FakeAuthenticator, FakeDirectory, FakeHelper, broker_config

PASSWORDS = {"alice": "wonderland", "bob": "builder", "carol": "singing"}
GROUPS = {"bob": {"staff"}}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def make_client(aiohttp_client: Any) -> Any:
    async def make(helper: FakeHelper | None = None, config: Config | None = None, signer: TokenSigner | None = None,
                   directory: FakeDirectory | None = None) -> TestClient:
        config = config or broker_config()
        assert config.broker is not None
        helper = helper or FakeHelper()
        flow = BootFlow(
            config, config.broker, FakeAuthenticator(PASSWORDS), helper, directory or FakeDirectory(GROUPS),
            ScriptRenderer(),
            signer or TokenSigner(config.broker.token_ttl), LoginLimiter(config.broker.limits),
        )
        server = TestServer(make_app(flow, helper))
        # the production runner's access log and parser limits (aiohttp_client would start a default one)
        await server.start_server(access_log_class=AccessLogger, **HANDLER_LIMITS)
        client: TestClient = await aiohttp_client(server)
        return client
    return make


def boot_links(menu: str) -> dict[str, str]:
    """image -> the path of its boot link, as the menu script has it."""
    return {m[1]: m[0] for m in re.findall(r"https://boot\.example\.org(/boot/([a-z0-9-]+)\.ipxe\?token=[\w.-]+)", menu)}


async def test_the_entry_script_offers_login_and_boots_local_by_default(make_client: Any) -> None:
    client = await make_client()
    response = await client.get("/boot.ipxe")
    text = await response.text()
    assert response.status == 200 and text.startswith("#!ipxe\n")
    assert "chain --replace --autofree https://${username:uristring}:${password:uristring}@boot.example.org/login.ipxe" in text
    assert "choose --default local --timeout 10000 selected" in text
    after = await (await client.get("/boot.ipxe?then=login")).text()
    assert "choose --default login " in after


async def test_login_without_credentials_is_challenged(make_client: Any) -> None:
    client = await make_client()
    response = await client.get("/login.ipxe")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert "Log in with your user name and password" in await response.text()


async def test_login_answers_the_images_this_user_may_boot(make_client: Any) -> None:
    client = await make_client()
    alice = await client.get("/login.ipxe", headers=basic("alice", "wonderland"))
    menu = await alice.text()
    assert alice.status == 200 and menu.startswith("#!ipxe\n")
    assert set(boot_links(menu)) == {"demo", "linux"}  # not staff: alice is not in group staff
    assert "item image-demo  Demo disk" in menu and "wonderland" not in menu
    bob = await (await client.get("/login.ipxe", headers=basic("bob", "builder"))).text()
    assert set(boot_links(bob)) == {"demo", "staff"}


async def test_groups_are_looked_up_only_when_an_image_admits_by_group(make_client: Any) -> None:
    directory = FakeDirectory(GROUPS)
    client = await make_client(directory=directory)
    menu = await (await client.get("/login.ipxe", headers=basic("alice", "wonderland"))).text()
    assert directory.asked == ["alice"]  # staff admits by group, and alice is not named
    boot = await client.get(boot_links(menu)["demo"])
    assert boot.status == 200 and directory.asked == ["alice"]  # demo admits everyone: no lookup
    everyone = FakeDirectory(GROUPS)
    client = await make_client(config=broker_config({"demo": {"description": "Demo", "users": ["*"]}}),
                               directory=everyone)
    menu = await (await client.get("/login.ipxe", headers=basic("bob", "builder"))).text()
    assert (await client.get(boot_links(menu)["demo"])).status == 200
    assert everyone.asked == []


async def test_login_by_post_form(make_client: Any) -> None:
    client = await make_client()
    response = await client.post("/login.ipxe", data={"username": "alice", "password": "wonderland"})
    assert response.status == 200 and "demo" in boot_links(await response.text())
    extra = await client.post("/login.ipxe", data={"username": "alice", "password": "wonderland", "x": "1"})
    assert extra.status == 400 and "only the fields username and password" in await extra.text()
    json_body = await client.post("/login.ipxe", json={"username": "alice", "password": "wonderland"})
    assert json_body.status == 400


async def test_a_password_in_the_query_string_is_refused_with_the_reason(make_client: Any) -> None:
    client = await make_client()
    for path in ("/login.ipxe?username=alice&password=wonderland", "/boot.ipxe?Password=x"):
        response = await client.get(path, headers=basic("alice", "wonderland"))
        text = await response.text()
        assert response.status == 400, path
        assert "query string" in text and "wonderland" not in text


async def test_wrong_password_and_unknown_user_get_the_same_answer_after_the_tarpit(make_client: Any) -> None:
    client = await make_client()
    answers = []
    for user, password in (("alice", "wrong"), ("nobody", "wrong")):
        started = time.monotonic()
        response = await client.get("/login.ipxe", headers=basic(user, password))
        elapsed = time.monotonic() - started
        answers.append((response.status, response.headers.get("WWW-Authenticate"), await response.text()))
        assert elapsed >= 0.05  # failure_delay in the test configuration: every failure waits it out
    assert answers[0] == answers[1]
    assert answers[0][0] == 401 and "Wrong user name or password." in answers[0][2]


async def test_the_screen_gets_the_reason_of_the_last_failure_once(make_client: Any) -> None:
    client = await make_client()
    await client.get("/login.ipxe", headers=basic("alice", "wrong"))
    first = await (await client.get("/message.ipxe")).text()
    assert "echo Wrong user name or password." in first
    assert "chain --replace --autofree https://boot.example.org/boot.ipxe?then=login" in first
    second = await (await client.get("/message.ipxe")).text()
    assert "Wrong user name" not in second and "Please log in again" in second


@pytest.mark.parametrize("header", [
    "Bearer abc", "Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
])
async def test_broken_basic_credentials_are_a_bad_request(make_client: Any, header: str) -> None:
    client = await make_client()
    response = await client.get("/login.ipxe", headers={"Authorization": header})
    assert response.status == 400
    assert (await response.text()).startswith("#!ipxe")


@pytest.mark.parametrize("user", ["al\x00ice", "ålice", "alice\nshell", "-alice", "a" * 200])
async def test_impossible_user_names_fail_like_a_wrong_password(make_client: Any, user: str) -> None:
    client = await make_client()
    response = await client.post("/login.ipxe", data={"username": user, "password": "wonderland"})
    assert response.status == 401 and "Wrong user name or password." in await response.text()


async def test_failed_logins_are_limited_per_user(make_client: Any) -> None:
    client = await make_client()
    for _ in range(3):
        assert (await client.get("/login.ipxe", headers=basic("alice", "wrong"))).status == 401
    locked = await client.get("/login.ipxe", headers=basic("alice", "wonderland"))
    assert locked.status == 429 and int(locked.headers["Retry-After"]) > 0
    assert "Too many failed logins" in await locked.text()
    # another user from the same address is below the address's limit
    assert (await client.get("/login.ipxe", headers=basic("bob", "builder"))).status == 200


async def test_failed_logins_of_an_overlong_name_are_limited_like_any_other(make_client: Any) -> None:
    client = await make_client()
    name = "x" * 100  # longer than any valid name
    for _ in range(3):
        assert (await client.get("/login.ipxe", headers=basic(name, "wrong"))).status == 401
    assert (await client.get("/login.ipxe", headers=basic(name, "wrong"))).status == 429


async def test_failed_logins_are_limited_per_address(make_client: Any) -> None:
    client = await make_client()
    for i in range(10):
        assert (await client.get("/login.ipxe", headers=basic(f"guess{i}", "x"))).status == 401
    assert (await client.get("/login.ipxe", headers=basic("bob", "builder"))).status == 429


async def test_boot_answers_a_sanboot_script_with_fresh_chap_credentials(make_client: Any) -> None:
    helper = FakeHelper()
    client = await make_client(helper)
    menu = await (await client.get("/login.ipxe", headers=basic("alice", "wonderland"))).text()
    response = await client.get(boot_links(menu)["demo"])
    script = await response.text()
    assert response.status == 200 and helper.sessions == [("demo", "alice")]
    lines = script.splitlines()
    assert "set username alice" in lines
    assert f"set password {CHAP_SECRET}" in lines
    assert "set initiator-iqn iqn.2026-11.org.example.lab:client.demo.alice.0a1b2c3d" in lines
    assert "sanboot iscsi:192.0.2.10::3260:0:iqn.2026-11.org.example.lab:demo.alice || goto failed" in lines
    # the CHAP values are set after anything the login left, and before sanboot
    assert lines.index(f"set password {CHAP_SECRET}") < lines.index(next(x for x in lines if x.startswith("sanboot")))


async def test_boot_of_a_netroot_image_passes_the_session_on_the_kernel_command_line(make_client: Any) -> None:
    client = await make_client()
    menu = await (await client.get("/login.ipxe", headers=basic("alice", "wonderland"))).text()
    script = await (await client.get(boot_links(menu)["linux"])).text()
    assert (
        f"netroot=iscsi:alice:{CHAP_SECRET}@192.0.2.10::3260:0:iqn.2026-11.org.example.lab:linux.alice" in script
    )
    assert "initrd --name initrd.img https://boot.example.org/f/initrd.img || goto failed" in script


async def test_boot_links_are_bound_to_image_address_and_time(make_client: Any) -> None:
    now = [1_000_000.0]
    signer = TokenSigner(300, clock=lambda: now[0])
    helper = FakeHelper()
    client = await make_client(helper, signer=signer)
    menu = await (await client.get("/login.ipxe", headers=basic("alice", "wonderland"))).text()
    demo = boot_links(menu)["demo"]
    token = demo.split("token=")[1]
    other_image = await client.get(f"/boot/linux.ipxe?token={token}")
    assert other_image.status == 403 and "Your login has expired" in await other_image.text()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (await client.get(f"/boot/demo.ipxe?token={forged}")).status == 403
    foreign = signer.issue("alice", "demo", "192.0.2.99")  # issued to another workstation
    assert (await client.get(f"/boot/demo.ipxe?token={foreign}")).status == 403
    now[0] += 301
    assert (await client.get(demo)).status == 403
    assert helper.sessions == []


@pytest.mark.parametrize("path, status", [
    ("/boot/demo.ipxe", 400),
    ("/boot/demo.ipxe?token=", 400),
    ("/boot/demo.ipxe?token=abc&x=1", 400),
    ("/boot/nope.ipxe?token=abc", 404),
    ("/boot/UPPER.ipxe?token=abc", 404),
    ("/boot/demo.ipxe?token=" + "a" * 600, 400),
])
async def test_bad_boot_requests(make_client: Any, path: str, status: int) -> None:
    client = await make_client()
    response = await client.get(path)
    assert response.status == status
    assert (await response.text()).startswith("#!ipxe")


async def _boot_demo(client: TestClient) -> Any:
    """Log in as alice and boot demo; the login's answer if it failed (a helper that is down fails there)."""
    login = await client.get("/login.ipxe", headers=basic("alice", "wonderland"))
    if login.status != 200:
        return login
    return await client.get(boot_links(await login.text())["demo"])


@pytest.mark.parametrize("helper, status, message", [
    (FakeHelper(error=DOWN), 503, "The boot service is not available right now."),
    (FakeHelper(error=StoreFull("no space for a new overlay")), 507, "There is no room for your disk right now."),
    (FakeHelper(error=BackendFailure("LIO refused")), 502, "Your disk could not be prepared."),
    (FakeHelper("garbage"), 500, "Your disk could not be prepared."),
])
async def test_a_broken_helper_gets_a_clear_message_and_status(
    make_client: Any, helper: FakeHelper, status: int, message: str
) -> None:
    client = await make_client(helper)
    response = await _boot_demo(client)
    text = await response.text()
    assert response.status == status and message in text
    assert "Retry-After" not in response.headers  # iPXE would retry a 503 silently instead of saying why
    assert "shell" not in text and "LIO refused" not in text
    assert message in await (await client.get("/message.ipxe")).text()


async def test_a_slow_helper_still_answers(make_client: Any) -> None:
    client = await make_client(FakeHelper("slow"))
    assert (await _boot_demo(client)).status == 200


async def test_the_menu_offers_only_published_images(make_client: Any) -> None:
    client = await make_client(FakeHelper(images=("demo",)))  # linux is configured but not published
    menu = await (await client.get("/login.ipxe", headers=basic("alice", "wonderland"))).text()
    assert set(boot_links(menu)) == {"demo"}
    none = await make_client(FakeHelper(images=()))
    response = await none.get("/login.ipxe", headers=basic("alice", "wonderland"))
    assert response.status == 403 and "You may not boot any disk here" in await response.text()


async def test_a_user_who_may_boot_nothing_is_told(make_client: Any) -> None:
    config = broker_config(images={"demo": {"description": "Demo disk", "users": ["alice"]}})
    client = await make_client(config=config)
    response = await client.get("/login.ipxe", headers=basic("carol", "singing"))
    assert response.status == 403 and "You may not boot any disk here" in await response.text()


async def test_size_limits(make_client: Any) -> None:
    client = await make_client()
    big = await client.post("/login.ipxe", data={"username": "alice", "password": "x" * 10_000})
    assert big.status == 413
    long_header = await client.get("/boot.ipxe", headers={"X-Junk": "x" * 10_000})
    assert long_header.status == 400
    long_password = await client.get("/login.ipxe", headers=basic("alice", "x" * 600))
    assert long_password.status == 400
    many_headers = await client.get("/boot.ipxe", headers={f"X-H{i}": "x" for i in range(40)})
    assert many_headers.status == 400


async def test_health(make_client: Any) -> None:
    ok = await (await make_client()).get("/health")
    assert ok.status == 200 and (await ok.json())["helper"]["backend"] == "reflink"
    down = await (await make_client(FakeHelper(error=DOWN))).get("/health")
    assert down.status == 503 and (await down.json())["helper"]["error"] == "helper_unavailable"


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"no {name} in:\n{text}"
    return float(found[1])


async def test_metrics_count_logins_and_time_sessions(make_client: Any) -> None:
    client = await make_client()
    for _ in range(3):
        await client.get("/login.ipxe", headers=basic("alice", "wrong"))
    for _ in range(2):  # limited: alice has 3 failures
        assert (await client.get("/login.ipxe", headers=basic("alice", "wonderland"))).status == 429
    ok = await make_client()  # another broker: its own counts
    await _boot_demo(ok)
    await _boot_demo(ok)
    text = await (await client.get("/metrics")).text()
    assert metric(text, 'bootbroker_logins_total{result="failed"}') == 3
    assert metric(text, 'bootbroker_logins_total{result="limited"}') == 2
    assert metric(text, 'bootbroker_logins_total{result="ok"}') == 0
    assert metric(text, "bootbroker_ensure_session_seconds_count") == 0
    scraped = await ok.get("/metrics")
    assert scraped.headers["Content-Type"].startswith("text/plain")
    text = await scraped.text()
    assert metric(text, 'bootbroker_logins_total{result="ok"}') == 2
    assert metric(text, "bootbroker_ensure_session_seconds_count") == 2
    assert metric(text, 'bootbroker_ensure_session_seconds_bucket{le="+Inf"}') == 2
    assert metric(text, "bootbroker_helper_up") == 1 and metric(text, "bootbroker_live_sessions") == 2
    assert metric(text, "bootbroker_store_free_bytes") == 1 << 30
    assert metric(text, "bootbroker_pam_conversations_total") == 0  # the fake authenticator is not PAM
    assert metric(text, "process_cpu_seconds_total") > 0


def test_metrics_add_up_pam_conversations_and_the_process_cpu() -> None:
    metrics = Metrics()
    metrics.pam_conversation(0.5, 0.25)
    metrics.pam_conversation(1.0, 0.5)
    before = metric(metrics.render(None), "process_cpu_seconds_total")
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    text = metrics.render(None)
    assert metric(text, "bootbroker_pam_conversations_total") == 2
    assert metric(text, "bootbroker_pam_seconds_total") == 1.5
    assert metric(text, "bootbroker_pam_cpu_seconds_total") == 0.75
    assert metric(text, "process_cpu_seconds_total") >= before + 0.05


async def test_metrics_say_when_the_helper_is_down_and_count_failed_sessions(make_client: Any) -> None:
    down = await make_client(FakeHelper(error=DOWN))
    text = await (await down.get("/metrics")).text()
    assert metric(text, "bootbroker_helper_up") == 0 and "bootbroker_live_sessions" not in text
    full = await make_client(FakeHelper(error=StoreFull("no space")))
    assert (await _boot_demo(full)).status == 507
    text = await (await full.get("/metrics")).text()
    assert metric(text, "bootbroker_ensure_session_failures_total") == 1
    assert "alice" not in text


async def test_no_password_secret_or_token_reaches_the_logs(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client()
    await client.get("/login.ipxe", headers=basic("alice", "not-the-password"))
    await client.get("/login.ipxe?password=leaked-in-query")
    menu = await (await client.get("/login.ipxe", headers=basic("alice", "wonderland"))).text()
    link = boot_links(menu)["demo"]
    assert (await client.get(link)).status == 200
    token = link.split("token=")[1]
    logged = caplog.text
    assert "GET /boot/demo.ipxe" in logged and "alice" in logged  # the flow was logged...
    for secret in ("wonderland", "not-the-password", "leaked-in-query", CHAP_SECRET, token):
        assert secret not in logged  # ...without any secret
