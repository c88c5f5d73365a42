"""The bad-input corpus for the helper socket (tests/bad_helper_requests.py) against the helper's server
over a real Unix socket, with stand-in operations: each case gets its error code (or the connection is
closed), the server keeps serving others, and no operation runs for a refused request. The arguments the
real helper refuses are checked here at their layer, broker/shared/identifiers.py."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest

from broker.shared.config import HelperConfig
from broker.shared.errors import BadIdentifier
from broker.helper.server import Groups, HelperServer
from broker.shared.identifiers import check_backup_name, check_image_name, check_user_name, check_version
from broker.shared.protocol import decode_request
from tests import bad_helper_requests as corpus
from tests.bad_helper_requests import ARGUMENT_CASES, CLOSED, GOOD, OK, PROTOCOL_CASES, Case

from .test_helper_server import Operations

T = TypeVar("T")

IDLE = 0.5


async def in_own_threads(calls: list[Callable[[], T]]) -> list[T]:
    """Run blocking clients in threads of their own: the server runs its operations in asyncio's default
    pool, which clients blocked on their sockets must not fill."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(await asyncio.gather(*(loop.run_in_executor(pool, call) for call in calls)))


async def serve(path: Path, operations: Operations) -> asyncio.AbstractServer:
    # Every client here is this test's uid: the per-uid connection cap (tested in test_helper_server) is lifted.
    server = HelperServer(operations, HelperConfig(path, "root", "root"), Groups(os.getgid(), os.getgid()),  # type: ignore[arg-type]
                          idle_timeout=IDLE, connections_per_uid=1000)
    return await server.serve()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "helper.sock"


def test_the_corpus_is_well_formed() -> None:
    names = [c.name for c in PROTOCOL_CASES + ARGUMENT_CASES]
    assert len(names) == len(set(names)) and len(PROTOCOL_CASES) >= 30 and len(ARGUMENT_CASES) >= 50


@pytest.mark.parametrize("case", PROTOCOL_CASES, ids=lambda c: c.name)
async def test_each_bad_request_gets_its_code_and_runs_nothing(path: Path, case: Case) -> None:
    operations = Operations()
    async with await serve(path, operations):
        ok, got = await asyncio.to_thread(corpus.check, case, str(path))
        assert ok, f"{case.name}: expected {case.expect}, got {got}"
        assert operations.calls == []
        assert await asyncio.to_thread(corpus.check, GOOD, str(path)) == (True, OK)


async def test_the_whole_corpus_on_one_server_at_once(path: Path) -> None:
    """Every case at the same time, four times over, on one server: each still gets its own answer."""
    operations = Operations()
    async with await serve(path, operations):
        cases = PROTOCOL_CASES * 4
        results = await in_own_threads([partial(corpus.check, c, str(path)) for c in cases])
        assert [got for _, got in results] == [c.expect for c in cases]
        assert operations.calls == []


async def test_a_silent_client_is_dropped_and_others_are_served_meanwhile(path: Path) -> None:
    async with await serve(path, Operations()):
        def silent() -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(path))
                sock.settimeout(IDLE + 15)  # generous: only that it is closed is asserted
                return sock.recv(1)
        waiting = asyncio.create_task(in_own_threads([silent] * 20))
        for _ in range(5):
            assert await asyncio.to_thread(corpus.check, GOOD, str(path)) == (True, OK)
        assert await waiting == [b""] * 20


async def test_many_connections_at_once_are_all_answered(path: Path) -> None:
    count = 200
    together = threading.Barrier(count)

    def client() -> str:  # all connected before any speaks (connected from threads: the loop must accept)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))  # blocking: a burst may fill the listen backlog for a moment
            together.wait(timeout=30)
            return corpus.send(sock, GOOD.raw)

    async with await serve(path, Operations()):
        assert await in_own_threads([client] * count) == [OK] * count


VALIDATORS = {"image": check_image_name, "user": check_user_name, "version": check_version, "backup": check_backup_name}


@pytest.mark.parametrize("case", ARGUMENT_CASES, ids=lambda c: c.name)
def test_wrongly_typed_arguments_pass_the_protocol_and_are_refused_by_identifiers(case: Case) -> None:
    """What the real helper does with them (it validates every argument through identifiers before
    touching anything): bad_identifier, never another exception."""
    request = decode_request(case.raw.rstrip(b"\n"))
    refused = []
    for name, value in request.args.items():
        try:
            VALIDATORS[name](value)
        except BadIdentifier as e:
            refused.append(name)
            assert len(e.message) < 300 and "\n" not in e.message
    assert refused, f"{case.name}: {json.dumps(request.args)[:80]} passed validation"
