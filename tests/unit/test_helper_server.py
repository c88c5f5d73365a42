"""The socket server's permission table and wire behaviour, with a stand-in for the operations.

The real operations are proven against real LIO in tests/lab; here only who-may-call-what and the
protocol edge are checked, over a real Unix socket.
"""

import asyncio
import socket
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from broker.shared.config import HelperConfig
from broker.shared.errors import BackendFailure, BadRequest, Busy, HelperUnavailable, NoSuchSession, UnknownImage
from broker.shared.helper_client import HelperClient
from broker.helper.server import PERMISSIONS, Groups, HelperServer, Peer, Role, watch_lio
from broker.shared.protocol import MAX_MESSAGE_BYTES, OPERATIONS, OpenFile, encode_request


class Operations:
    """Records calls; answers like the real helper would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def ensure_session(self, image: str, user: str) -> dict[str, Any]:
        self.calls.append(("ensure_session", {"image": image, "user": user}))
        return {"target_iqn": "iqn.x:y"}

    def end_session(self, image: str, user: str) -> dict[str, Any]:
        raise NoSuchSession(f"{user} has no live session on {image}")

    def reset(self, image: str, user: str) -> dict[str, Any]:
        self.calls.append(("reset", {}))
        return {}

    def sessions(self) -> list[Any]:
        return []

    def health(self) -> dict[str, Any]:
        return {"ok": True}

    def publish(self, image: str, source: str) -> dict[str, Any]:
        self.calls.append(("publish", {}))
        return {}

    def publish_overlay(self, image: str, from_image: str, user: str) -> dict[str, Any]:
        self.calls.append(("publish_overlay", {}))
        return {}

    def published(self) -> list[str]:
        return ["demo"]

    def images(self) -> list[Any]:
        self.calls.append(("images", {}))
        return []

    def retire(self, image: str, version: int | None) -> dict[str, Any]:
        self.calls.append(("retire", {}))
        return {}

    def restore(self, image: str, user: str, backup: str | None) -> dict[str, Any]:
        self.calls.append(("restore", {}))
        return {}

    def backups(self) -> list[Any]:
        return []

    def rebase(self, image: str, user: str) -> dict[str, Any]:
        self.calls.append(("rebase", {}))
        return {}

    def set_current(self, image: str, version: int) -> dict[str, Any]:
        self.calls.append(("set_current", {}))
        return {}

    boot_file_content = b"kernel " * 1000

    def boot_file(self, image: str, version: int, name: str) -> OpenFile:
        self.calls.append(("boot_file", {"image": image, "version": version, "name": name}))
        if version != 2:
            raise UnknownImage(f"{image} v{version} has no {name} of its own")
        path = Path(os.environ["BOOT_FILE_DIR"]) / name
        path.write_bytes(self.boot_file_content)
        fd = os.open(path, os.O_RDONLY)
        return OpenFile(fd, os.fstat(fd).st_size)


def test_every_operation_has_a_permission() -> None:
    assert set(PERMISSIONS) == set(OPERATIONS)
    assert all(Role.ROOT in roles for roles in PERMISSIONS.values())


@pytest.mark.parametrize(
    "roles, op, allowed",
    [
        (Role.BROKER, "ensure_session", True),
        (Role.BROKER, "reset", False),
        (Role.BROKER, "sessions", False),
        (Role.BROKER, "publish", False),
        (Role.HELPDESK, "reset", True),
        (Role.HELPDESK, "sessions", True),
        (Role.HELPDESK, "ensure_session", False),
        (Role.HELPDESK, "publish", False),
        (Role.HELPDESK, "images", True),
        (Role.HELPDESK, "publish_overlay", False),
        (Role.BROKER, "publish_overlay", False),
        (Role.BROKER, "published", True),
        (Role.NONE, "published", False),
        (Role.HELPDESK, "retire", False),
        (Role.BROKER, "images", False),
        (Role.BROKER, "retire", False),
        (Role.ROOT, "retire", True),
        (Role.HELPDESK, "restore", True),
        (Role.HELPDESK, "backups", True),
        (Role.BROKER, "restore", False),
        (Role.BROKER, "backups", False),
        (Role.HELPDESK, "rebase", True),
        (Role.BROKER, "rebase", False),
        (Role.NONE, "health", False),
        (Role.ROOT, "publish", True),
        (Role.HELPDESK, "set_current", False),
        (Role.BROKER, "set_current", False),
        (Role.ROOT, "set_current", True),
        (Role.BROKER, "boot_file", True),
        (Role.HELPDESK, "boot_file", False),
        (Role.NONE, "boot_file", False),
    ],
)
def test_permissions(roles: Role, op: str, allowed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOT_FILE_DIR", str(tmp_path))
    operations = Operations()
    server = HelperServer(operations, HelperConfig(Path("/x"), "b", "h"), Groups(1, 2))  # type: ignore[arg-type]
    values = {"image": "demo", "user": "alice", "source": "/x", "version": 2, "backup": None,
              "from_image": "demo", "name": "vmlinuz"}
    args = {name: values[name] for name in OPERATIONS[op]}
    reply = json.loads(asyncio.run(server.answer(Peer(1, 1000, 1000, roles), encode_request(op, args))))
    if allowed:
        assert reply["ok"] is True
    else:
        assert reply["error"]["code"] == "not_permitted"
        assert operations.calls == []


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "helper.sock"


async def _serve(socket_path: Path, operations: Operations) -> asyncio.AbstractServer:
    config = HelperConfig(socket_path, "root", "root")
    return await HelperServer(operations, config, Groups(os.getgid(), os.getgid())).serve()  # type: ignore[arg-type]


async def test_client_and_server_over_a_real_socket(socket_path: Path) -> None:
    operations = Operations()
    server = await _serve(socket_path, operations)
    async with server:
        client = HelperClient(socket_path)
        assert await asyncio.to_thread(client.call, "ensure_session", image="demo", user="alice") == {
            "target_iqn": "iqn.x:y"
        }
        with pytest.raises(NoSuchSession, match="alice has no live session"):
            await asyncio.to_thread(client.call, "end_session", image="demo", user="alice")
        assert (socket_path.stat().st_mode & 0o777) == 0o660


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_boot_file_is_handed_over_as_an_open_descriptor(
    socket_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOOT_FILE_DIR", str(tmp_path))
    operations = Operations()
    server = await _serve(socket_path, operations)
    async with server:
        client = HelperClient(socket_path)
        await asyncio.to_thread(client.call, "health")  # the server's own descriptors are open from here on
        await asyncio.sleep(0.05)  # and that connection's closed on both sides
        before = _open_descriptors()
        for _ in range(3):  # one connection each; the helper closes its copy each time
            opened = await asyncio.to_thread(client.call_for_file, "boot_file", image="demo", version=2, name="vmlinuz")
            with os.fdopen(opened.fd, "rb") as f:
                assert f.read() == Operations.boot_file_content
            assert opened.size == len(Operations.boot_file_content)
        with pytest.raises(UnknownImage, match="v3 has no initrd.img"):
            await asyncio.to_thread(client.call_for_file, "boot_file", image="demo", version=3, name="initrd.img")
        # Another request on the same connection after a file: the replies stay in order.
        reader, writer = await asyncio.open_unix_connection(socket_path)
        for version, ok in ((2, True), (3, False), (2, True)):
            writer.write(encode_request("boot_file", {"image": "demo", "version": version, "name": "vmlinuz"}))
            assert json.loads(await reader.readline())["ok"] is ok
        writer.write(encode_request("health", {}))
        assert json.loads(await reader.readline())["result"] == {"ok": True}
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
        assert _open_descriptors() == before  # nothing leaked on either side


async def test_a_file_operation_answered_without_a_file_is_an_internal_error(socket_path: Path) -> None:
    server = await _serve(socket_path, Operations())
    async with server:
        client = HelperClient(socket_path)
        with pytest.raises(Exception, match="without the file"):
            # health answers a plain line: what a broken or older helper would do
            await asyncio.to_thread(client.call_for_file, "health")


async def test_an_oversized_request_is_refused(socket_path: Path) -> None:
    server = await _serve(socket_path, Operations())
    async with server:
        reader, writer = await asyncio.open_unix_connection(socket_path)
        writer.write(b"x" * (MAX_MESSAGE_BYTES * 4) + b"\n")
        reply = json.loads(await reader.readline())
        assert reply["error"]["code"] == "bad_request"
        assert await reader.readline() == b""  # and the connection is closed
        writer.close()


def test_a_missing_helper_is_reported_clearly(socket_path: Path) -> None:
    with pytest.raises(HelperUnavailable, match="is `bootbroker helper` running"):
        HelperClient(socket_path).call("health")


def test_a_helper_too_busy_to_take_a_connection_is_reported_clearly(socket_path: Path) -> None:
    # A listener that never accepts: once its queue is full, a connect with a timeout (non-blocking
    # underneath) fails with EAGAIN, which must read as "unavailable", not as an unexpected failure.
    waiting: list[socket.socket] = []
    socket_path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(socket_path))
        listener.listen(0)
        try:
            while True:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                waiting.append(conn)
                conn.setblocking(False)
                try:
                    conn.connect(str(socket_path))
                except BlockingIOError:
                    break
            with pytest.raises(HelperUnavailable, match="too busy"):
                HelperClient(socket_path, timeout=1).call("health")
        finally:
            for conn in waiting:
                conn.close()


class Contended(Operations):
    """ensure_session waits for a gate, as logins wait for the helper's lock behind a slow one."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.inside = threading.Semaphore(0)

    def ensure_session(self, image: str, user: str) -> dict[str, Any]:
        self.inside.release()
        self.gate.wait()
        return super().ensure_session(image, user)


async def test_read_only_operations_answer_while_logins_wait_and_too_many_waiting_are_told_busy(socket_path: Path) -> None:
    operations = Contended()
    server = HelperServer(operations, HelperConfig(socket_path, "root", "root"), Groups(os.getgid(), os.getgid()),  # type: ignore[arg-type]
                          max_waiting=8)
    async with await server.serve():
        client = HelperClient(socket_path, timeout=30)
        pool = ThreadPoolExecutor(max_workers=48)
        loop = asyncio.get_running_loop()
        logins = [loop.run_in_executor(pool, partial(client.call, "ensure_session", image="demo", user=f"u{i}"))
                  for i in range(40)]
        try:
            for _ in range(8):  # the bounded number of logins is waiting at the gate
                assert await loop.run_in_executor(pool, operations.inside.acquire, True, 30)
            # Everything read-only answers meanwhile; it would wait behind the gate if it shared the logins' threads.
            for op in ("health", "published", "sessions", "backups", "images"):
                await asyncio.wait_for(loop.run_in_executor(pool, partial(client.call, op)), 20)
        finally:
            operations.gate.set()
        results = await asyncio.gather(*logins, return_exceptions=True)
        pool.shutdown()
    busy = [r for r in results if isinstance(r, Busy)]
    served = [r for r in results if isinstance(r, dict)]
    assert len(busy) == 32 and len(served) == 8, results
    assert "try again" in busy[0].message


# Root never follows a link it did not make, nor trusts a directory others can write (issue 15, defect 6)

@pytest.mark.parametrize("mode, owner", [(0o777, 0), (0o775, 0), (0o755, 1000)])
async def test_a_socket_directory_others_can_write_is_refused(tmp_path: Path, mode: int, owner: int) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chown(run, owner, 0)
    run.chmod(mode)
    with pytest.raises(BadRequest, match="writable by others"):
        await _serve(run / "helper.sock", Operations())
    assert not (run / "helper.sock").exists()


async def test_a_socket_swapped_for_a_link_after_bind_is_refused_and_its_target_untouched(
    socket_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("root's secret\n")
    victim.chmod(0o600)
    bind = asyncio.start_unix_server

    async def swapped(*args: Any, **kwargs: Any) -> asyncio.AbstractServer:
        server = await bind(*args, **kwargs)
        socket_path.unlink()
        socket_path.symlink_to(victim)  # what a writer of the directory could do between bind and chmod
        return server

    monkeypatch.setattr(asyncio, "start_unix_server", swapped)
    with pytest.raises(BadRequest, match="not the socket"):
        await _serve(socket_path, Operations())
    assert (victim.stat().st_mode & 0o777, victim.stat().st_gid) == (0o600, 0)


async def test_one_user_cannot_hold_more_than_its_share_of_connections(socket_path: Path) -> None:
    """A helpdesk member opening connections without end would exhaust the helper's file descriptors."""
    server = HelperServer(Operations(), HelperConfig(socket_path, "root", "root"), Groups(os.getgid(), os.getgid()),  # type: ignore[arg-type]
                          idle_timeout=120, connections_per_uid=4)
    async with await server.serve():
        held = [await asyncio.open_unix_connection(socket_path) for _ in range(4)]
        reader, writer = await asyncio.open_unix_connection(socket_path)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed at once, unanswered
        writer.close()
        for _, w in held[1:]:
            w.write(encode_request("health", {}))
        assert [json.loads(await r.readline())["ok"] for r, _ in held[1:]] == [True] * 3  # the others are served
        held[0][1].close()
        await held[0][1].wait_closed()
        client = HelperClient(socket_path, timeout=10)
        for _ in range(100):  # until the server has noticed the close: then the freed slot is usable again
            try:
                assert await asyncio.to_thread(client.call, "health") == {"ok": True}
                break
            except HelperUnavailable:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("a freed connection slot was never given to a new connection")
        for _, w in held[1:]:
            w.close()


async def test_the_lio_watch_repairs_in_rounds_and_logs_a_lasting_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    class Failing:
        rounds = 0

        def repair_lost(self) -> int:
            self.rounds += 1
            raise BackendFailure("LIO refused target x: injected")

    failing = Failing()
    watch = asyncio.create_task(watch_lio(failing, interval=0.01))  # type: ignore[arg-type]
    while failing.rounds < 20:
        await asyncio.sleep(0.01)
    watch.cancel()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "injected" in errors[0].getMessage()
