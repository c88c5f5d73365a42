"""qemu's guestfwd helper: one guest connection on stdin/stdout, relayed to a TCP port on 127.0.0.1.

A client VM on a restricted user network (restrict=on: it reaches nothing else) gets to the lab's
forwarded broker and iSCSI ports this way: `guestfwd=tcp:10.0.2.100:PORT-cmd:python3 guestfwd.py HOSTPORT`.
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def relay(port: int) -> None:
    upstream = socket.create_connection(("127.0.0.1", port))

    def guest_to_host() -> None:
        while data := os.read(0, 65536):
            upstream.sendall(data)
        upstream.shutdown(socket.SHUT_WR)

    threading.Thread(target=guest_to_host, daemon=True).start()
    while data := upstream.recv(65536):
        os.write(1, data)


if __name__ == "__main__":
    relay(int(sys.argv[1]))
