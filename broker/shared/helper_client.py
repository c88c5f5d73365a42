"""The client side of the helper protocol.

Deliberately synchronous and light: the CLI imports it on every run (without asyncio, which costs
seconds to import on a slow machine), and the broker calls it from a worker thread.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import HelperUnavailable, InternalError, error_from_code
from .protocol import MAX_MESSAGE_BYTES, MAX_REPLY_BYTES, OpenFile, encode_request


class HelperClient:
    def __init__(self, socket_path: Path, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        """Send one request; return its result or raise the error the helper reported."""
        with self._connect() as conn:
            line = self._exchange(conn, op, args, lambda: conn.makefile("rb").readline(MAX_REPLY_BYTES))
        return _result(line)

    def call_for_file(self, op: str, **args: Any) -> OpenFile:
        """Send one request of FILE_OPERATIONS; return the open file the helper sent with its reply (the
        caller closes it), or raise the error it reported."""
        fds: list[int] = []

        def receive() -> bytes:
            line = b""
            while not line.endswith(b"\n") and len(line) <= MAX_MESSAGE_BYTES:
                chunk, received, flags, _ = socket.recv_fds(conn, MAX_MESSAGE_BYTES, 1)
                fds.extend(received)
                if flags & socket.MSG_CTRUNC:
                    raise InternalError(f"the helper's answer to {op} carried more descriptors than one")
                if not chunk:
                    break
                line += chunk
            return line

        try:
            with self._connect() as conn:
                line = self._exchange(conn, op, args, receive)
            result = _result(line)
            if len(fds) != 1 or not isinstance(result, dict):
                raise InternalError(f"the helper answered {op} without the file")
            fd = fds.pop()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise InternalError(f"the helper answered {op} with something that is not a file")
            return OpenFile(fd, st.st_size)
        finally:
            for fd in fds:
                os.close(fd)

    def _connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.timeout)
        try:
            conn.connect(str(self.socket_path))
        except FileNotFoundError:
            conn.close()
            raise HelperUnavailable(f"no helper socket at {self.socket_path}; is `bootbroker helper` running?") from None
        except PermissionError:
            conn.close()
            raise HelperUnavailable(
                f"no permission to use {self.socket_path}; join the broker or helpdesk group"
            ) from None
        except ConnectionRefusedError:
            conn.close()
            raise HelperUnavailable(f"the helper at {self.socket_path} is not accepting connections") from None
        except BlockingIOError:  # EAGAIN: its queue of connections waiting to be accepted is full
            conn.close()
            raise HelperUnavailable(f"the helper at {self.socket_path} is too busy to take a connection") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _exchange(self, conn: socket.socket, op: str, args: dict[str, Any], receive: Callable[[], bytes]) -> bytes:
        try:
            conn.sendall(encode_request(op, args))
            line = receive()
        except TimeoutError:
            raise HelperUnavailable(f"the helper did not answer {op} within {self.timeout:.0f} s") from None
        except ConnectionError as e:
            raise HelperUnavailable(f"the helper closed the connection: {e}") from None
        if not line:
            raise HelperUnavailable(
                "the helper closed the connection without answering (did it stop? see its log; it repairs "
                "half-done work when it starts again, so the request can be repeated then)"
            )
        return line


def _result(line: bytes) -> Any:
    try:
        reply = json.loads(line)
    except json.JSONDecodeError:
        raise InternalError("the helper answered with something that is not JSON") from None
    if reply.get("ok"):
        return reply.get("result")
    error = reply.get("error") or {}
    raise error_from_code(str(error.get("code")), str(error.get("message")))
