"""lab/guestfwd.py relays a client VM's connection; what it writes is the connection (stdout and stderr)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from lab import guestfwd


def test_a_connection_it_cannot_make_is_closed_without_a_byte() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, guestfwd.__file__, str(port)], input=b"GET / HTTP/1.0\r\n\r\n",
                          capture_output=True, timeout=30)
    assert (done.stdout, done.stderr) == (b"", b"")
    assert done.returncode == 1


def test_bytes_are_relayed_both_ways() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data.upper())

        threading.Thread(target=echo, daemon=True).start()
        done = subprocess.run([sys.executable, guestfwd.__file__, str(server.getsockname()[1])], input=b"hello",
                              capture_output=True, timeout=30)
    assert (done.stdout, done.stderr, done.returncode) == (b"HELLO", b"", 0)
