"""The login use case (BootFlow.login) under concurrency, with a gate in the authenticator: how many
attempts reach PAM, whose name the menu and the helper get, and what a busy PAM answers (issue 15)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from broker.web.boot import BootFlow
from broker.shared.errors import Busy, LoginFailed, NotPermitted, TooManyAttempts
from broker.web.limiter import LoginLimiter
from broker.web.scripts import ScriptRenderer
from broker.web.tokens import TokenSigner

from .webfakes import FakeAuthenticator, FakeDirectory, FakeHelper, broker_config

PASSWORDS = {"alice": "wonderland", "bob": "builder"}


class GatedAuthenticator(FakeAuthenticator):
    """Holds every conversation until the test opens the gate, as PAM holds a thread for seconds."""

    def __init__(self, passwords: dict[str, str], **kw: Any) -> None:
        super().__init__(passwords, **kw)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def authenticate(self, user: str, password: str) -> bool:
        self.calls.append(user)
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return self.passwords.get(user) == password


class BusyAuthenticator(FakeAuthenticator):
    async def authenticate(self, user: str, password: str) -> bool:
        self.calls.append(user)
        raise Busy("PAM's queue is full")


def make_flow(authenticator: FakeAuthenticator, directory: FakeDirectory | None = None,
              helper: FakeHelper | None = None, **kw: Any) -> BootFlow:
    config = broker_config()  # user_failures 3, address_failures 10, failure_delay 0.05
    assert config.broker is not None
    return BootFlow(
        config, config.broker, authenticator, helper or FakeHelper(), directory or FakeDirectory({}),
        ScriptRenderer(), TokenSigner(config.broker.token_ttl), LoginLimiter(config.broker.limits), **kw,
    )


async def settle(auth: GatedAuthenticator, count: int) -> None:
    """Until `count` conversations are held at the gate, and a moment more in which nobody else gets in."""
    while auth.waiting < count:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


async def test_simultaneous_wrong_guesses_reach_pam_at_most_the_users_limit() -> None:
    auth = GatedAuthenticator(PASSWORDS)
    flow = make_flow(auth)
    tasks = [asyncio.create_task(flow.login("alice", f"guess{i}", "192.0.2.7")) for i in range(32)]
    await settle(auth, 3)
    assert auth.waiting == 3  # user_failures: the others wait for those three, then are refused
    auth.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, LoginFailed) for r in results) == 3
    assert sum(isinstance(r, TooManyAttempts) for r in results) == 29
    assert len(auth.calls) == 3


async def test_simultaneous_guesses_of_many_users_reach_pam_at_most_the_addresss_limit() -> None:
    auth = GatedAuthenticator(PASSWORDS)
    flow = make_flow(auth)
    tasks = [asyncio.create_task(flow.login(f"user{i}", "guess", "192.0.2.7")) for i in range(32)]
    await settle(auth, 10)
    auth.gate.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(auth.calls) == 10  # address_failures


async def test_a_class_behind_one_address_logging_in_at_once_is_served_not_refused() -> None:
    """A boot storm behind NAT: more good logins at once from one address than address_failures. Attempts
    in flight beyond the limit wait for a slot; only failures refuse (the lab's fifty users were 429ed)."""
    passwords = {f"class{i:02d}": "right" for i in range(25)}
    auth = GatedAuthenticator(passwords)
    flow = make_flow(auth, FakeDirectory({}, accounts=list(passwords)))
    tasks = [asyncio.create_task(flow.login(user, "right", "192.0.2.7")) for user in passwords]
    await settle(auth, 10)
    assert auth.waiting == 10 and not any(t.done() for t in tasks)  # address_failures in PAM, the rest wait
    auth.gate.set()
    menus = await asyncio.gather(*tasks)
    assert all("choose your disk" in menu for menu in menus) and len(auth.calls) == 25


@pytest.mark.parametrize("addresses", [
    [f"2001:db8:5:6::{i:x}" for i in range(1, 12)],  # a host picks a new address of its /64 per guess
    ["::ffff:192.0.2.7", "192.0.2.7"] * 6,  # the same IPv4 client, written both ways
])
async def test_an_ipv6_64_or_a_mapped_ipv4_address_is_one_client(addresses: list[str]) -> None:
    auth = FakeAuthenticator(PASSWORDS)
    flow = make_flow(auth)
    for i, address in enumerate(addresses[:10]):
        with pytest.raises(LoginFailed):
            await flow.login(f"user{i}", "guess", address)
    with pytest.raises(TooManyAttempts):
        await flow.login("bob", "builder", addresses[10])
    assert await flow.login("bob", "builder", "2001:db8:5:7::1")  # the next /64 is another client


async def test_failures_of_any_spelling_of_a_name_count_for_one_account() -> None:
    auth = FakeAuthenticator(PASSWORDS, case_sensitive=False)
    flow = make_flow(auth, FakeDirectory({}, accounts=["alice", "bob"]))
    for name in ("Alice", "ALICE", "aLiCe"):
        with pytest.raises(LoginFailed):
            await flow.login(name, "guess", f"192.0.2.{len(auth.calls) + 1}")
    with pytest.raises(TooManyAttempts):
        await flow.login("alice", "wonderland", "192.0.2.99")


async def test_the_menu_the_token_and_the_helper_get_the_name_nss_gives() -> None:
    auth = FakeAuthenticator(PASSWORDS, case_sensitive=False)
    directory, helper = FakeDirectory({}, accounts=["alice", "bob"]), FakeHelper()
    flow = make_flow(auth, directory, helper)
    menu = await flow.login("ALICE", "wonderland", "192.0.2.7")
    assert auth.calls == ["ALICE"]  # PAM decides on the name as typed...
    assert directory.named == ["ALICE"]  # ...then NSS says whose account it is
    assert "menu alice: choose your disk" in menu and "ALICE" not in menu
    token = re.findall(r"/boot/demo\.ipxe\?token=([\w.-]+)", menu)[0]
    assert flow.signer.verify(token, "demo", "192.0.2.7").user == "alice"
    await flow.boot("demo", token, "192.0.2.7")
    assert helper.sessions == [("demo", "alice")]


@pytest.mark.parametrize("canonical", [None, "alice\nroot"])
async def test_an_account_pam_accepts_but_nss_cannot_name_boots_nothing(canonical: str | None) -> None:
    class Directory(FakeDirectory):
        def canonical(self, user: str) -> str | None:
            return canonical

    helper = FakeHelper()
    flow = make_flow(FakeAuthenticator(PASSWORDS), Directory({}), helper)
    with pytest.raises(NotPermitted):
        await flow.login("alice", "wonderland", "192.0.2.7")
    assert helper.sessions == []


async def test_a_busy_pam_is_answered_busy_and_is_no_failure() -> None:
    flow = make_flow(BusyAuthenticator(PASSWORDS))
    for _ in range(5):  # more than user_failures
        with pytest.raises(Busy):
            await flow.login("alice", "wonderland", "192.0.2.7")
    assert flow.limiter.retry_after("alice", "192.0.2.7") == 0 and len(flow.limiter) == 0
    assert flow.metrics.logins["busy"] == 5 and flow.metrics.logins["failed"] == 0


async def test_a_busy_answer_waits_out_the_tarpit_as_a_failure_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided: busy is no failure, but it is tarpitted: answered at once, it let a flood loop (275,000 busy
    answers in 90 s in benchmarks/pam_flood.py, against 290 failures), for the event loop to pay."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    flow = make_flow(BusyAuthenticator(PASSWORDS), clock=lambda: 100.0)  # no time passes in the flow
    with pytest.raises(Busy):
        await flow.login("alice", "wonderland", "192.0.2.7")
    assert slept == [pytest.approx(0.05)]  # failure_delay
