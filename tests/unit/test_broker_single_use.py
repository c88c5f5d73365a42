"""Boot links are single use (issue 15): a replay within the TTL would drop the live session and mint new
CHAP credentials for whoever sent it. Served through aiohttp's test client with fake ports."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.web.boot import BootFlow
from broker.shared.errors import BackendFailure
from broker.web.limiter import LoginLimiter
from broker.web.scripts import ScriptRenderer
from broker.web.tokens import TokenSigner
from broker.web.app import make_app

from .webfakes import FakeAuthenticator, FakeDirectory, FakeHelper, broker_config

BASIC = {"Authorization": "Basic " + base64.b64encode(b"alice:wonderland").decode()}


class GatedHelper(FakeHelper):
    """ensure_session waits for the test's gate: two requests for one link are in the broker at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.asked = 0

    async def ensure_session(self, image: str, user: str) -> dict[str, Any]:
        self.asked += 1
        await self.gate.wait()
        return await super().ensure_session(image, user)


@pytest.fixture
def make_client(aiohttp_client: Any) -> Any:
    async def make(helper: FakeHelper) -> TestClient:
        config = broker_config()
        assert config.broker is not None
        flow = BootFlow(config, config.broker, FakeAuthenticator({"alice": "wonderland"}), helper, FakeDirectory({}),
                        ScriptRenderer(), TokenSigner(config.broker.token_ttl), LoginLimiter(config.broker.limits))
        client: TestClient = await aiohttp_client(TestServer(make_app(flow, helper)))
        return client
    return make


async def links(client: TestClient) -> dict[str, str]:
    menu = await (await client.get("/login.ipxe", headers=BASIC)).text()
    return {m[1]: m[0] for m in re.findall(r"https://boot\.example\.org(/boot/([a-z0-9-]+)\.ipxe\?token=[\w.-]+)", menu)}


async def test_a_boot_link_works_once(make_client: Any) -> None:
    helper = FakeHelper()
    client = await make_client(helper)
    menu = await links(client)
    assert (await client.get(menu["demo"])).status == 200
    replay = await client.get(menu["demo"])
    assert replay.status == 403 and "Your login has expired" in await replay.text()
    assert (await client.get(menu["linux"])).status == 403  # the same menu's other link too
    assert helper.sessions == [("demo", "alice")]
    again = await links(client)  # a new login gives new links
    assert (await client.get(again["demo"])).status == 200
    assert helper.sessions == [("demo", "alice")] * 2


async def test_two_requests_for_one_link_at_once_start_one_session(make_client: Any) -> None:
    helper = GatedHelper()
    client = await make_client(helper)
    link = (await links(client))["demo"]
    first = asyncio.create_task(client.get(link))
    while helper.asked == 0:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(client.get(link))  # while the first waits for the helper
    while not second.done() and helper.asked < 2:
        await asyncio.sleep(0.01)
    helper.gate.set()
    assert (await first).status == 200
    assert (await second).status == 403
    assert helper.asked == 1


async def test_a_link_whose_boot_failed_is_spent(make_client: Any) -> None:
    """Decided: a link is spent at its first use, before the helper is asked. After any failure the scripts
    send the person back to the login prompt (message.ipxe chains boot.ipxe?then=login), so no flow uses a
    link twice; spending it only once the helper had answered would let a replay race the first use."""
    helper = FakeHelper(error=BackendFailure("LIO refused"))
    client = await make_client(helper)
    link = (await links(client))["demo"]
    assert (await client.get(link)).status == 502
    assert (await client.get(link)).status == 403
