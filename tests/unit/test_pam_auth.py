"""The PAM port's own behaviour: bounded concurrency and refusals before PAM is asked. Real PAM (pam_unix
with real accounts) is proven in tests/lab/test_broker.py."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import pytest

from broker.web import pam_auth
from broker.shared.errors import Busy
from broker.web.pam_auth import PamAuthenticator


class SlowPam:
    """Stands in for python-pam's handle to count how many conversations run at once."""

    lock = threading.Lock()
    running = 0
    peak = 0
    calls: list[str] = []

    def __init__(self) -> None:
        self.reason = "Authentication failure"

    def authenticate(self, user: str, password: str, service: str, resetcreds: bool) -> bool:
        with SlowPam.lock:
            SlowPam.running += 1
            SlowPam.peak = max(SlowPam.peak, SlowPam.running)
            SlowPam.calls.append(service)
        time.sleep(0.05)
        with SlowPam.lock:
            SlowPam.running -= 1
        return password == "right"


@pytest.fixture
def slow_pam(monkeypatch: pytest.MonkeyPatch) -> type[SlowPam]:
    monkeypatch.setattr(pam_auth.pam, "pam", SlowPam)
    SlowPam.running = SlowPam.peak = 0
    SlowPam.calls = []
    return SlowPam


async def test_at_most_concurrency_conversations_run_at_once(slow_pam: Any) -> None:
    auth = PamAuthenticator("bootbroker", concurrency=3)
    try:
        results = await asyncio.gather(*(auth.authenticate(f"u{i}", "right" if i % 2 else "wrong") for i in range(12)))
    finally:
        auth.close()
    assert results == [bool(i % 2) for i in range(12)]
    assert slow_pam.peak == 3 and slow_pam.calls == ["bootbroker"] * 12


async def test_pam_threads_run_at_a_lower_priority_than_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    class NicenessPam(SlowPam):
        def authenticate(self, user: str, password: str, service: str, resetcreds: bool) -> bool:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return True

    monkeypatch.setattr(pam_auth.pam, "pam", NicenessPam)
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    auth = PamAuthenticator("bootbroker", concurrency=2)
    try:
        assert await asyncio.gather(*(auth.authenticate(f"u{i}", "pw") for i in range(4))) == [True] * 4
    finally:
        auth.close()
    assert seen == [min(19, ours + pam_auth.NICENESS)] * 4
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ours  # the event loop's thread keeps its own


@pytest.mark.parametrize("user, password", [("alice", ""), ("alice", "x" * 513), ("alice", "a\0b"), ("al\0ice", "right")])
async def test_impossible_credentials_never_reach_pam(slow_pam: Any, user: str, password: str) -> None:
    auth = PamAuthenticator("bootbroker", concurrency=1)
    try:
        assert await auth.authenticate(user, password) is False
    finally:
        auth.close()
    assert slow_pam.calls == []


class BusyPam(SlowPam):
    """Burns CPU in the PAM thread, as pam_unix does while it hashes a password."""

    def authenticate(self, user: str, password: str, service: str, resetcreds: bool) -> bool:
        deadline = time.thread_time() + 0.05
        while time.thread_time() < deadline:
            pass
        time.sleep(0.05)
        return True


async def test_each_conversation_is_observed_with_its_time_and_cpu_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pam_auth.pam, "pam", BusyPam)
    seen: list[tuple[float, float, str]] = []
    auth = PamAuthenticator("bootbroker", concurrency=2,
                            observe=lambda s, cpu: seen.append((s, cpu, threading.current_thread().name)))
    try:
        assert await asyncio.gather(auth.authenticate("a", "x"), auth.authenticate("b", "y")) == [True, True]
        assert await auth.authenticate("c", "") is False  # refused before PAM: no conversation
    finally:
        auth.close()
    assert len(seen) == 2
    for seconds, cpu, thread in seen:
        assert 0.05 <= cpu < seconds  # the CPU burnt, not the sleep; the time, both
        assert thread == threading.main_thread().name  # reported in the event loop's thread


class GatedPam(SlowPam):
    """Holds each conversation in its PAM thread until the test opens the gate; each takes `seconds` of the
    authenticator's (fake) clock."""

    gate = threading.Event()
    now = [0.0]
    seconds = 1.0

    def authenticate(self, user: str, password: str, service: str, resetcreds: bool) -> bool:
        with SlowPam.lock:
            SlowPam.calls.append(user)
        GatedPam.gate.wait()
        with SlowPam.lock:
            GatedPam.now[0] += GatedPam.seconds
        return password == "right"


@pytest.fixture
def gated_pam(monkeypatch: pytest.MonkeyPatch) -> type[GatedPam]:
    monkeypatch.setattr(pam_auth.pam, "pam", GatedPam)
    GatedPam.gate = threading.Event()
    GatedPam.now = [0.0]
    GatedPam.seconds = pam_auth.FIRST_ESTIMATE
    SlowPam.calls = []
    return GatedPam


async def test_a_login_that_would_wait_too_long_for_pam_is_answered_busy_at_once(gated_pam: Any) -> None:
    """The queue in front of PAM's threads is bounded by the wait it means: 2 threads drain 20 waiting
    conversations of FIRST_ESTIMATE (before any is measured) in 10 of them, the bound here."""
    auth = PamAuthenticator("bootbroker", concurrency=2, max_wait=10 * pam_auth.FIRST_ESTIMATE,
                            clock=lambda: gated_pam.now[0])
    try:
        waiting = [asyncio.create_task(auth.authenticate(f"u{i}", "right")) for i in range(20)]
        refused = asyncio.create_task(auth.authenticate("late", "right"))
        for _ in range(3):
            await asyncio.sleep(0)
        assert refused.done() and isinstance(refused.exception(), Busy)  # answered while the others wait
        assert not any(task.done() for task in waiting)
        gated_pam.gate.set()
        assert await asyncio.gather(*waiting) == [True] * 20
        assert "late" not in gated_pam.calls  # PAM was never asked
        assert await auth.authenticate("again", "right") is True  # the queue drained: admitted again
    finally:
        gated_pam.gate.set()  # a failed assertion must not leave PAM threads waiting
        auth.close()


async def test_the_bound_follows_how_long_conversations_take(gated_pam: Any) -> None:
    gated_pam.gate.set()
    gated_pam.seconds = 0.1  # a fast stack: ten times as many may wait for the same time
    auth = PamAuthenticator("bootbroker", concurrency=1, max_wait=10.0, clock=lambda: gated_pam.now[0])
    try:
        for i in range(30):
            assert await auth.authenticate(f"u{i}", "right") is True
        gated_pam.gate.clear()
        waiting = [asyncio.create_task(auth.authenticate(f"w{i}", "right")) for i in range(60)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert not any(task.done() for task in waiting)  # 60 of 0.1 s: 6 s, within the bound
        gated_pam.gate.set()
        assert await asyncio.gather(*waiting) == [True] * 60
    finally:
        gated_pam.gate.set()
        auth.close()


async def test_the_user_name_pam_refused_is_escaped_in_the_log(slow_pam: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    auth = PamAuthenticator("bootbroker", concurrency=1)
    try:
        assert await auth.authenticate("alice\nFAKE root logged in\x1b[2J", "wrong") is False
    finally:
        auth.close()
    [record] = [r for r in caplog.records if r.name == "broker.web.pam_auth"]
    assert "PAM refused alice\\nFAKE root logged in\\x1b[2J" in record.getMessage()
    assert "\n" not in record.getMessage() and "\x1b" not in record.getMessage()
