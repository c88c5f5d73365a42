"""The PAM port's own behaviour: bounded concurrency and refusals before PAM is asked. Real PAM (pam_unix
with real accounts) is proven in tests/lab/test_broker.py."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from broker import pam_auth
from broker.pam_auth import PamAuthenticator


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
