"""The bad-input corpus (tests/bad_requests.py) against the broker app served for real on 127.0.0.1 and hit
with raw sockets, so malformed requests reach aiohttp's parser: each case gets its status (or is dropped),
a good request is served after each, and neither PAM nor the helper is asked for any of them."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import aiohttp
import pytest

from broker.web.tokens import TokenSigner
from tests import bad_requests
from tests.bad_requests import CASES, CLOSED, Case

from .realserver import Clock, Served, served
from .webfakes import broker_config

PASSWORDS = {"alice": "wonderland"}
BASIC = {"Authorization": "Basic " + base64.b64encode(b"alice:wonderland").decode()}
REQUEST_TIMEOUT = 1.0
# Generous login limits: the corpus's 401 cases must stay 401 here (the lab accepts 429 for them).
CONFIG = broker_config(
    request_timeout=REQUEST_TIMEOUT,
    limits={"failure_delay": 0.01, "user_failures": 1000, "address_failures": 1000, "window": 60},
)


async def check(served_: Served, case: Case) -> None:
    source = "127.0.0.2" if case.from_other_address else None
    ok, got = await asyncio.to_thread(bad_requests.check, case, served_.port, timeout=REQUEST_TIMEOUT + 10, source=source)
    assert ok, f"{case.name}: expected {case.expect}, got {got}"
    good, got = await asyncio.to_thread(bad_requests.check, CASES[0], served_.port, timeout=10)
    assert good, f"after {case.name} a good request got {got}"


async def login(port: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/login.ipxe", headers=BASIC) as r:
            menu = await r.text()
    links = re.findall(r"https://boot\.example\.org(/boot/demo\.ipxe\?token=[\w.-]+)", menu)
    assert len(links) == 1, menu
    return str(links[0])


def test_the_corpus_is_well_formed() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) and len(CASES) >= 60
    assert all(isinstance(c.expect, int) or c.expect == CLOSED for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_each_bad_request_gets_its_status_and_nothing_is_asked(case: Case) -> None:
    async with served(CONFIG, PASSWORDS) as s:
        await check(s, case)
        assert s.authenticator.calls == [] and s.helper.sessions == []


async def test_forged_and_misused_boot_links_are_refused_without_the_helper() -> None:
    async with served(CONFIG, PASSWORDS) as s:
        link = await login(s.port)
        cases = bad_requests.token_cases(link, other_image="linux")
        for case in cases:
            await check(s, case)
        assert s.authenticator.calls == ["alice"]  # the one real login
        assert s.helper.sessions == []


async def test_an_expired_boot_link_is_refused_without_the_helper() -> None:
    clock = Clock()
    async with served(CONFIG, PASSWORDS, signer=TokenSigner(300, clock=clock)) as s:
        link = await login(s.port)
        clock.now += 301
        await check(s, Case("token_expired", bad_requests.get(link), 403))
        assert s.helper.sessions == []
        clock.now -= 301  # the same link, in time, is good: the refusal was the expiry
        ok, got = await asyncio.to_thread(bad_requests.check, Case("valid", bad_requests.get(link), 200), s.port)
        assert ok, got
        assert s.helper.sessions == [("demo", "alice")]


async def test_the_whole_corpus_on_one_server_in_a_row(caplog: Any) -> None:
    """The same server takes every case one after another (state left by one cannot break the next)."""
    async with served(CONFIG, PASSWORDS) as s:
        for case in CASES:
            if case.expect != CLOSED:
                await check(s, case)
        assert s.authenticator.calls == [] and s.helper.sessions == []
