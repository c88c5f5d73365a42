"""qemu's guestfwd helper: one guest connection on stdin/stdout, relayed to a TCP port on 127.0.0.1.

A client VM on a restricted user network (restrict=on: it reaches nothing else) gets to the lab's
forwarded broker and iSCSI ports this way: `guestfwd=tcp:10.0.2.100:PORT-cmd:python3 guestfwd.py HOSTPORT`.

qemu hands the command the guest's connection as stdout *and* stderr, so nothing but relayed bytes may be
written there: a connection it cannot make (the lab VM powered off, a port not listening yet) or one that
breaks is closed silently, as a real network would close it (a traceback would reach the guest's iSCSI
initiator as data).
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def relay(port: int) -> None:
    upstream = socket.create_connection(("127.0.0.1", port))

    def guest_to_host() -> None:
        try:
            while data := os.read(0, 65536):
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            os._exit(0)  # the other side is gone: close the guest's connection

    threading.Thread(target=guest_to_host, daemon=True).start()
    while data := upstream.recv(65536):
        os.write(1, data)


def main(argv: list[str]) -> int:
    try:
        relay(int(argv[1]))
    except OSError:
        return 1  # nothing written: the guest sees its connection closed
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
