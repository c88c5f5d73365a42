"""The helper's Unix socket: who is calling (SO_PEERCRED), what they may do, one request per line.

Roles come from the peer's credentials as the kernel reports them, checked on every request: root may
do everything; the broker group may start sessions and read health; the helpdesk group may reset, end
and list sessions.

Operations run in threads of two pools. The read-only ones (`READ_ONLY`) take no lock and have a pool
of their own, so health checks, menus and listings answer while logins queue for the helper's lock. The
others share a pool of `max_waiting` threads; when that many are already running or waiting for the lock,
a further request is refused at once with `busy` ("try again") rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Flag, auto
from pathlib import Path

from ..shared.caps import ConnectionCap
from ..shared.config import HelperConfig
from ..shared.errors import BadRequest, BrokerError, Busy, ConfigError, InternalError, NotPermitted
from ..shared.files import others_can_write
from ..shared.protocol import MAX_MESSAGE_BYTES, OpenFile, decode_request, encode_error, encode_result
from . import faults
from .operations import Helper, run_operation

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0  # a peer that connects and never speaks is dropped after this
BACKLOG = 1024  # connections waiting to be accepted (asyncio's default of 100 is short for a boot storm)
MAX_WAITING = 64  # changing operations running or waiting for the lock at once; more are answered `busy`
READ_ONLY = frozenset({"health", "published", "sessions", "backups", "images", "boot_file"})  # take no lock
READERS = 4
CONNECTIONS_PER_UID = 64  # the broker holds at most its pool's 16; one user's CLI holds one
WATCH_INTERVAL = 10.0  # seconds between checks that LIO still has every live session's ACL


class Role(Flag):
    NONE = 0
    ROOT = auto()
    BROKER = auto()
    HELPDESK = auto()


PERMISSIONS: dict[str, Role] = {
    "ensure_session": Role.ROOT | Role.BROKER,
    "end_session": Role.ROOT | Role.BROKER | Role.HELPDESK,
    "reset": Role.ROOT | Role.HELPDESK,
    "sessions": Role.ROOT | Role.HELPDESK,
    "health": Role.ROOT | Role.BROKER | Role.HELPDESK,
    "publish": Role.ROOT,
    "publish_overlay": Role.ROOT,
    "images": Role.ROOT | Role.HELPDESK,
    "published": Role.ROOT | Role.BROKER | Role.HELPDESK,
    "retire": Role.ROOT,
    "restore": Role.ROOT | Role.HELPDESK,
    "backups": Role.ROOT | Role.HELPDESK,
    "rebase": Role.ROOT | Role.HELPDESK,
    "set_current": Role.ROOT,
    "boot_file": Role.ROOT | Role.BROKER,
}


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    roles: Role


@dataclass(frozen=True)
class Groups:
    broker: int
    helpdesk: int

    @classmethod
    def resolve(cls, config: HelperConfig) -> Groups:
        gids, problems = [], []
        for key, name in (("broker_group", config.broker_group), ("helpdesk_group", config.helpdesk_group)):
            try:
                gids.append(grp.getgrnam(name).gr_gid)
            except KeyError:
                problems.append(f"[helper] {key}: group {name!r} does not exist; create it (groupadd {name})")
        if problems:
            raise ConfigError("helper groups", problems)
        return cls(*gids)


def identify(sock: socket.socket, groups: Groups) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    member_of = {gid}
    try:
        member_of.update(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        pass  # a uid with no passwd entry has only its primary group
    roles = Role.NONE
    if uid == 0:
        roles |= Role.ROOT
    if groups.broker in member_of:
        roles |= Role.BROKER
    if groups.helpdesk in member_of:
        roles |= Role.HELPDESK
    return Peer(pid, uid, gid, roles)


ACL_XATTR = "system.posix_acl_access"
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF
_RW = 0o6


def grant_group_access(path: Path, gid: int) -> None:
    """Let a second group (helpdesk) connect to the 0660 broker-group socket, through a POSIX ACL.

    Written as the kernel's xattr format directly, so the helper needs no setfacl binary.
    """
    entries = [
        (_ACL_USER_OBJ, _RW, _ACL_UNDEFINED_ID),
        (_ACL_GROUP_OBJ, _RW, _ACL_UNDEFINED_ID),
        (_ACL_GROUP, _RW, gid),
        (_ACL_MASK, _RW, _ACL_UNDEFINED_ID),
        (_ACL_OTHER, 0, _ACL_UNDEFINED_ID),
    ]
    value = struct.pack("<I", 2) + b"".join(_ACL_ENTRY.pack(*e) for e in entries)
    try:
        os.setxattr(path, ACL_XATTR, value)
    except OSError as e:
        log.warning("cannot give the helpdesk group access to %s (%s): helpdesk commands must run as root",
                    path, e.strerror)


class HelperServer:
    def __init__(
        self, helper: Helper, config: HelperConfig, groups: Groups, idle_timeout: float = IDLE_TIMEOUT,
        max_waiting: int = MAX_WAITING, connections_per_uid: int = CONNECTIONS_PER_UID,
    ) -> None:
        self.helper = helper
        self.config = config
        self.groups = groups
        self.idle_timeout = idle_timeout
        self.max_waiting = max_waiting
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="helper-read")
        self._workers = ThreadPoolExecutor(max_waiting, thread_name_prefix="helper-work")
        self._waiting = 0  # changed only in the event loop's thread
        self._connections = ConnectionCap(connections_per_uid)  # per peer uid

    async def serve(self) -> asyncio.AbstractServer:
        path = self.config.socket
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        problem = others_can_write(path.parent)
        if problem:
            raise BadRequest(f"[helper] socket: {problem}")
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise BadRequest(f"[helper] socket: {path} exists and is not a socket; remove it")
            path.unlink()
        # Created 0600 and only then opened to the broker group, so no one connects in between.
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                self._connection, path, limit=MAX_MESSAGE_BYTES + 1, backlog=BACKLOG
            )
        finally:
            os.umask(old_umask)
        try:
            self._open_to_groups(path)
        except BaseException:
            server.close()
            raise
        log.info("helper listening on %s", path)
        return server

    def _open_to_groups(self, path: Path) -> None:
        """Give the socket its group, mode and helpdesk ACL through a descriptor of the node itself, opened
        without following links and checked to be a socket: root never changes what a link points to. (The
        directory is root's alone, checked above, so nobody else can have put another socket there.)"""
        node = os.open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            if not stat.S_ISSOCK(os.fstat(node).st_mode):
                raise BadRequest(f"[helper] socket: {path} is not the socket the helper made; it was replaced")
            # An O_PATH descriptor takes no fchown/fchmod; its /proc name reaches the same inode, never a link.
            through = f"/proc/self/fd/{node}"
            os.chown(through, 0, self.groups.broker)
            os.chmod(through, 0o660)
            grant_group_access(Path(through), self.groups.helpdesk)
        finally:
            os.close(node)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = identify(writer.get_extra_info("socket"), self.groups)
        client = f"uid {peer.uid}"
        if not self._connections.admit(client):
            writer.close()
            return
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle_timeout)
                except TimeoutError:
                    break
                except ValueError:  # longer than the limit; the stream cannot be resynchronised
                    writer.write(encode_error(BadRequest(f"request longer than {MAX_MESSAGE_BYTES} bytes")))
                    break
                if not line:
                    break
                reply, fd = await self.answer_with_file(peer, line)
                if fd is None:
                    writer.write(reply)
                    await writer.drain()
                    continue
                try:
                    if not await _send_with_file(writer, reply, fd):
                        log.warning("could not hand an open file to uid %d pid %d; connection closed", peer.uid, peer.pid)
                        break
                finally:
                    os.close(fd)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._connections.release(client)

    async def answer(self, peer: Peer, line: bytes) -> bytes:
        """The reply line to one request (an open file it answers with is closed: see answer_with_file)."""
        reply, fd = await self.answer_with_file(peer, line)
        if fd is not None:
            os.close(fd)
        return reply

    async def answer_with_file(self, peer: Peer, line: bytes) -> tuple[bytes, int | None]:
        """The reply line to one request, and the descriptor a file operation answers with (the caller sends
        it with the line, then closes it)."""
        try:
            request = decode_request(line)
            if not PERMISSIONS[request.op] & peer.roles:
                raise NotPermitted(f"uid {peer.uid} may not {request.op}")
            result = await self._run(request.op, request.args)
        except BrokerError as e:
            log.info("refused a request from uid %d pid %d: %s: %s", peer.uid, peer.pid, e.code.value, e.message)
            return encode_error(e), None
        except Exception:
            log.exception("operation failed unexpectedly (uid %d pid %d)", peer.uid, peer.pid)
            return encode_error(InternalError("internal error in the helper; see its log")), None
        if isinstance(result, OpenFile):
            return encode_result({"size": result.size}), result.fd
        return encode_result(result), None

    async def _run(self, op: str, args: dict[str, object]) -> object:
        loop = asyncio.get_running_loop()
        if op in READ_ONLY:
            return await loop.run_in_executor(self._readers, run_operation, self.helper, op, args)
        if self._waiting >= self.max_waiting:
            raise Busy(f"the helper has {self._waiting} requests running or waiting; try again in a moment")
        self._waiting += 1
        try:
            return await loop.run_in_executor(self._workers, run_operation, self.helper, op, args)
        finally:
            self._waiting -= 1


async def _send_with_file(writer: asyncio.StreamWriter, reply: bytes, fd: int) -> bool:
    """Send a reply line with `fd` in SCM_RIGHTS, in one sendmsg on the connection's socket. Asyncio's
    stream has no way to attach a descriptor, so this writes past it, which keeps the order of the
    replies only with nothing of the stream's still unsent: clients wait for each reply before the next
    request, so nothing is, and a client that did not is dropped (False) rather than answered out of
    order. The line is far smaller than an empty socket's buffer; a socket that cannot take it at once is
    dropped the same way."""
    await writer.drain()
    if writer.transport.get_write_buffer_size():
        return False
    transport_socket = writer.get_extra_info("socket")
    with socket.socket(fileno=os.dup(transport_socket.fileno())) as sock:
        try:
            return socket.send_fds(sock, [reply], [fd]) == len(reply)
        except (BlockingIOError, InterruptedError):
            return False


async def watch_lio(helper: Helper, interval: float = WATCH_INTERVAL) -> None:
    """Every `interval` seconds, put back what LIO lost of the live sessions while the helper ran. A
    failure is logged when it first happens (not every round) and retried."""
    reported = ""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(helper.repair_lost)
            reported = ""
        except BrokerError as e:
            if e.message != reported:
                log.error("cannot put back the live sessions LIO lost: %s: %s (retrying every %.0f s)",
                          e.code.value, e.message, interval)
                reported = e.message


async def run_helper(helper: Helper, config: HelperConfig) -> None:
    groups = Groups.resolve(config)
    await asyncio.to_thread(helper.start)
    faults.arm()
    server = await HelperServer(helper, config, groups).serve()
    watcher = asyncio.create_task(watch_lio(helper))
    try:
        async with server:
            await server.serve_forever()
    finally:
        watcher.cancel()
