"""The lab VM's command agent: runs as root inside the VM and executes what lab/vm.py asks.

JSON lines over TCP, one request per line, one response per request. The port is reachable only
through qemu's host forward on the host's 127.0.0.1; every request must carry the token that the
host wrote to a root-only file, so other local users cannot borrow the VM's root.

Operations: ping; run (argv, stdin, timeout, user, env, cwd) -> rc, stdout, stderr, timeout;
spawn (same, no timeout) -> id; signal (id, signal); wait (id, timeout) -> rc, output.
"""

from __future__ import annotations

import argparse
import grp
import itertools
import json
import os
import pwd
import signal
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REPO = Path(__file__).resolve().parents[1]

Request = dict[str, Any]


@dataclass(frozen=True)
class Spawned:
    """A background process and the file that collects its output."""

    proc: subprocess.Popen[bytes]
    log: Path


_spawned: dict[int, Spawned] = {}
_ids = itertools.count(1)
_lock = threading.Lock()


def _environment(user: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    home = pwd.getpwnam(user).pw_dir if user else "/root"
    name = user or "root"
    env = {"PATH": BASE_PATH, "HOME": home, "USER": name, "LOGNAME": name, "LANG": "C.UTF-8"}
    return env | (extra or {})


def _popen_args(request: Request) -> dict[str, Any]:
    """Keyword arguments for Popen shared by run and spawn; user= drops to that user's uid/gids."""
    user = request.get("user")
    args: dict[str, Any] = {
        "env": _environment(user, request.get("env")),
        "cwd": request.get("cwd") or "/",
        "start_new_session": True,  # its own process group, so a timeout kills the whole tree
    }
    if user:
        entry = pwd.getpwnam(user)
        groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
        args |= {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups}
    return args


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def op_ping(request: Request) -> dict[str, Any]:
    return {"pong": True}


def op_run(request: Request) -> dict[str, Any]:
    stdin = request.get("stdin")
    proc = subprocess.Popen(
        request["argv"], stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **_popen_args(request),
    )
    data = stdin.encode() if stdin is not None else None
    try:
        out, err = proc.communicate(data, timeout=request.get("timeout"))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return {"rc": None, "timeout": True, "stdout": _text(out), "stderr": _text(err)}
    return {"rc": proc.returncode, "timeout": False, "stdout": _text(out), "stderr": _text(err)}


def op_spawn(request: Request) -> dict[str, Any]:
    ident = next(_ids)
    log = Path(f"/tmp/lab-spawn-{ident}.log")
    stdin_path = log.with_suffix(".stdin")
    stdin_path.write_text(request.get("stdin") or "")
    with log.open("wb") as out, stdin_path.open("rb") as stdin:
        proc = subprocess.Popen(
            request["argv"], stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
            **_popen_args(request),
        )
    with _lock:
        _spawned[ident] = Spawned(proc, log)
    return {"id": ident}


def _lookup(request: Request) -> Spawned:
    with _lock:
        spawned = _spawned.get(request["id"])
    if spawned is None:
        raise KeyError(f"no spawned process {request['id']}")
    return spawned


def op_signal(request: Request) -> dict[str, Any]:
    _lookup(request).proc.send_signal(request["signal"])
    return {}


def op_wait(request: Request) -> dict[str, Any]:
    spawned = _lookup(request)
    try:
        rc: int | None = spawned.proc.wait(timeout=request.get("timeout"))
    except subprocess.TimeoutExpired:
        rc = None
    return {"rc": rc, "output": _text(spawned.log.read_bytes())}


OPERATIONS = {
    "ping": op_ping, "run": op_run, "spawn": op_spawn, "signal": op_signal, "wait": op_wait,
}


def answer(line: bytes, token: str) -> dict[str, Any]:
    """One response for one request line; every failure becomes {"error": ...}."""
    try:
        request = json.loads(line)
        if request.get("token") != token:
            return {"error": "bad token"}
        operation = OPERATIONS.get(request.get("op"))
        if operation is None:
            return {"error": f"unknown op {request.get('op')!r}"}
        return operation(request)
    except Exception as exc:  # noqa: BLE001 - the client must get an answer, not a closed socket
        return {"error": f"{type(exc).__name__}: {exc}"}


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def handle(self) -> None:
        for line in self.rfile:
            reply = answer(line, self.server.token)
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, token: str) -> None:
        self.token = token
        super().__init__(("0.0.0.0", port), Handler)


def open_path_for_users() -> None:
    """Let dropped-privilege runs reach the host's Python and repo.

    The host's /root is 0700 and pyenv lives under it; in the VM (overlay, host untouched) add
    search permission to every directory above the interpreter and the repo.
    """
    for target in (Path(os.path.realpath(sys.executable)), REPO):
        for directory in target.parents:
            directory.chmod(directory.stat().st_mode | 0o011)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    args = parser.parse_args(argv)
    open_path_for_users()
    with Server(args.port, args.token_file.read_text().strip()) as server:
        print(f"lab-agent: ready on port {args.port}", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
