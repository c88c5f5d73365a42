"""The client side of the helper protocol.

Deliberately synchronous and light: the CLI imports it on every run (without asyncio, which costs
seconds to import on a slow machine), and the broker calls it from a worker thread.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .errors import HelperUnavailable, InternalError, error_from_code
from .protocol import MAX_REPLY_BYTES, encode_request


class HelperClient:
    def __init__(self, socket_path: Path, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        """Send one request; return its result or raise the error the helper reported."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(self.timeout)
            try:
                conn.connect(str(self.socket_path))
            except FileNotFoundError:
                raise HelperUnavailable(f"no helper socket at {self.socket_path}; is `bootbroker helper` running?") from None
            except PermissionError:
                raise HelperUnavailable(
                    f"no permission to use {self.socket_path}; join the broker or helpdesk group"
                ) from None
            except ConnectionRefusedError:
                raise HelperUnavailable(f"the helper at {self.socket_path} is not accepting connections") from None
            except BlockingIOError:  # EAGAIN: its queue of connections waiting to be accepted is full
                raise HelperUnavailable(f"the helper at {self.socket_path} is too busy to take a connection") from None
            try:
                conn.sendall(encode_request(op, args))
                line = conn.makefile("rb").readline(MAX_REPLY_BYTES)
            except TimeoutError:
                raise HelperUnavailable(f"the helper did not answer {op} within {self.timeout:.0f} s") from None
            except ConnectionError as e:
                raise HelperUnavailable(f"the helper closed the connection: {e}") from None
        if not line:
            raise HelperUnavailable(
                "the helper closed the connection without answering (did it stop? see its log; it repairs "
                "half-done work when it starts again, so the request can be repeated then)"
            )
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            raise InternalError("the helper answered with something that is not JSON") from None
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        raise error_from_code(str(error.get("code")), str(error.get("message")))
