"""What a TLS handshake costs the broker, with an RSA-2048 and with an ECDSA P-256 certificate.

Runs the real broker app on 127.0.0.1 in a process of its own, with the TLS context `serve` uses
(broker.tls.server_context) and a certificate generated as `serve` generates it, of each key type in
turn. Client processes connect as the workstations' iPXE 2.0 does: TLS 1.2 only, offering exactly the
suites iPXE 2.0 offers, in its order (lab/tls_wire.py's IPXE_2_OFFERS, which the lab's TLS test checks
against a real iPXE's ClientHello), verifying the certificate. Each connection fetches /boot.ipxe once and
closes, so every request pays a handshake: the worst case (iPXE keeps its connection open between
requests while the broker lets it; the lab's captures show how many connections a real boot makes).
Two kinds of handshake:

  full      a new session each time: what each workstation's first connection costs
  resumed   the session of the client's previous connection offered back, as iPXE 2.0 does when it
            must connect again (the broker closes a connection idle for request_timeout, e.g. while a
            person types): no certificate, no key exchange

The figure is the broker's own CPU per connection (its user + system time from /proc, so the clients'
CPU and the machine's other load do not count), and connections per CPU-second, for each certificate and
kind, taken in alternating rounds; the ratios are within one run. The same request over plain HTTP is
measured too: a handshake's own cost is the difference ("of it TLS").

    .venv/bin/python benchmarks/tls_handshakes.py                 # 3 rounds of 5 s each: about a minute
    .venv/bin/python benchmarks/tls_handshakes.py --rounds 5 --duration 10 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.web.tls import ServerCertificate, ensure_certificate, server_context  # noqa: E402
from lab.tls_wire import IPXE_2_OFFERS  # noqa: E402
from stand_ins import benchmark_config, start_broker  # noqa: E402  benchmarks/stand_ins.py: run as python benchmarks/NAME.py

KEY_TYPES = ("rsa", "ecdsa")
REQUEST = b"GET /boot.ipxe HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: iPXE/2.0.0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class Case:
    """One measurement: the server's certificate (none: plain HTTP) and the kind of handshake."""

    key_type: str  # "rsa", "ecdsa", or "plain"
    kind: str  # "full", "resumed", or "none"

    @property
    def name(self) -> str:
        return "plain HTTP" if self.key_type == "plain" else f"{self.key_type.upper()} {self.kind}"


CASES = (Case("plain", "none"), *(Case(key, kind) for key in KEY_TYPES for kind in ("full", "resumed")))


class NobodyLogsIn:
    async def authenticate(self, user: str, password: str) -> bool:
        raise AssertionError("the TLS benchmark fetches /boot.ipxe only")


def serve(cert: ServerCertificate | None, ready: Connection) -> None:
    """The broker's process: its app and site on a free port (HTTPS with `cert`, plain HTTP without),
    the port sent through `ready`, until terminated."""

    async def start_and_run() -> None:
        if cert is None:
            cfg, context = benchmark_config(url="http://127.0.0.1", insecure_http=True), None
        else:
            cfg, context = benchmark_config(url="https://127.0.0.1"), server_context(cert)
        runner, port = await start_broker(cfg, NobodyLogsIn(), context)
        ready.send(port)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(start_and_run())


def client_context(cert: ServerCertificate) -> ssl.SSLContext:
    """What iPXE 2.0 offers and checks: TLS 1.2, its suites in its order, the certificate it was built to trust."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(":".join(IPXE_2_OFFERS.values()))
    context.load_verify_locations(cert.certificate)
    return context


def exchange(connection: socket.socket) -> None:
    """GET /boot.ipxe and read the answer to the end (the broker closes: Connection: close)."""
    connection.sendall(REQUEST)
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"the broker answered {answer[:40]!r}")


def fetch(port: int, context: ssl.SSLContext | None, session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
    """One connection, one request, as iPXE makes them: TLS when there is a `context` (offering
    `session`). Returns the session to offer next time and whether this one was resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        # iPXE sends at once; without this, Nagle holds the request behind the client's Finished (40 ms).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is None:
            exchange(raw)
            return None, False
        with context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
            exchange(tls)
            return tls.session, bool(tls.session_reused)


def client(port: int, cert: ServerCertificate | None, kind: str, deadline: float, results: Connection) -> None:
    """One client process: connections one after another until `deadline`; sends (connections, resumed)."""
    context = client_context(cert) if cert is not None else None
    session = None
    done = resumed = 0
    while time.monotonic() < deadline:
        session, reused = fetch(port, context, session if kind == "resumed" else None)
        done += 1
        resumed += reused
    results.send((done, resumed))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(server: int, port: int, cert: ServerCertificate | None, case: Case, duration: float,
            processes: int) -> dict[str, Any]:
    """`processes` clients against the server (pid `server`) for `duration` seconds: connections made and
    resumed, and the server's CPU seconds and the wall time they took."""
    deadline = time.monotonic() + duration
    pipes = [multiprocessing.Pipe(duplex=False) for _ in range(processes)]
    before, started = cpu_seconds(server), time.monotonic()
    workers = [multiprocessing.Process(target=client, args=(port, cert, case.kind, deadline, send)) for _, send in pipes]
    for worker in workers:
        worker.start()
    counts = [receive.recv() for receive, _ in pipes]
    for worker in workers:
        worker.join()
    wall, cpu = time.monotonic() - started, cpu_seconds(server) - before
    return {"case": case.name, "key_type": case.key_type, "kind": case.kind,
            "connections": sum(done for done, _ in counts), "resumed": sum(r for _, r in counts),
            "server_cpu_s": cpu, "wall_s": wall}


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """For each case, the median over the rounds of the broker's CPU per connection; a handshake's own
    cost is that less plain HTTP's (the same request without TLS); ECDSA's rates over RSA's."""
    rows = []
    for case in CASES:
        mine = [s for s in samples if s["case"] == case.name]
        rows.append({"case": case.name, "key_type": case.key_type, "kind": case.kind,
                     "cpu_ms": statistics.median(1000 * s["server_cpu_s"] / s["connections"] for s in mine),
                     "per_second": statistics.median(s["connections"] / s["wall_s"] for s in mine)})
    plain = rows[0]["cpu_ms"]
    for row in rows:
        row["per_cpu_second"] = _ratio(1000, row["cpu_ms"])
        row["tls_ms"] = row["cpu_ms"] - plain
    cost = {(r["key_type"], r["kind"]): r for r in rows}
    return {"rows": rows, "ecdsa_over_rsa": {
        kind: {"connections": _ratio(cost["ecdsa", kind]["per_cpu_second"], cost["rsa", kind]["per_cpu_second"]),
               "handshakes": _ratio(cost["rsa", kind]["tls_ms"], cost["ecdsa", kind]["tls_ms"])}
        for kind in ("full", "resumed")
    }}


def _ratio(a: float, b: float) -> float:
    """a / b; NaN when b is not above 0 (a run too short for the CPU clock's 10 ms ticks)."""
    return a / b if b > 0 else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures every case (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each measurement (default 5)")
    parser.add_argument("--clients", type=int, default=3, help="client processes connecting at once (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.clients < 1:
        parser.error("--rounds and --clients must be at least 1, --duration more than 0")

    with tempfile.TemporaryDirectory(prefix="tls-bench-") as scratch:
        certs: dict[str, ServerCertificate | None] = {"plain": None, **{
            key: ensure_certificate(Path(scratch, f"{key}.crt"), Path(scratch, f"{key}.key"), ["127.0.0.1"], key)
            for key in KEY_TYPES}}
        servers: dict[str, tuple[multiprocessing.Process, int]] = {}
        for key, cert in certs.items():
            receive, send = multiprocessing.Pipe(duplex=False)
            process = multiprocessing.Process(target=serve, args=(cert, send), daemon=True)
            process.start()
            servers[key] = (process, receive.recv())
        print(f"the broker's CPU per connection (GET /boot.ipxe), TLS 1.2 offering iPXE 2.0's {len(IPXE_2_OFFERS)} "
              f"suites: {args.rounds} rounds of {args.duration:g} s per case, {args.clients} clients", flush=True)
        samples: list[dict[str, Any]] = []
        try:
            for round_ in range(1, args.rounds + 1):
                for case in CASES:
                    process, port = servers[case.key_type]
                    assert process.pid is not None
                    sample = measure(process.pid, port, certs[case.key_type], case, args.duration, args.clients)
                    samples.append({"round": round_, **sample})
                    print(f"  round {round_}: {case.name:13} {sample['connections']:6d} connections "
                          f"({sample['resumed']} resumed), {sample['server_cpu_s']:.2f} s of the broker's CPU", flush=True)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.join()

    summary = summarise(samples)
    print(f"\n{'case':13} {'broker CPU ms':>13} {'of it TLS':>9} {'per CPU-second':>14} {'per second':>10}")
    for row in summary["rows"]:
        print(f"{row['case']:13} {row['cpu_ms']:13.2f} {row['tls_ms']:9.2f} {row['per_cpu_second']:14.0f} {row['per_second']:10.0f}")
    names = {key: cert.key_type for key, cert in certs.items() if cert is not None}
    for kind, ratio in summary["ecdsa_over_rsa"].items():
        print(f"{names['ecdsa']} over {names['rsa']}, {kind}: {ratio['connections']:.2f}x the connections per broker "
              f"CPU-second; {ratio['handshakes']:.2f}x cheaper TLS")
    problems = [f"{s['case']}: {s['resumed']} of {s['connections']} resumed" for s in samples
                if s["resumed"] != (s["connections"] - args.clients if s["kind"] == "resumed" else 0)]
    for problem in problems:
        print(f"UNEXPECTED: {problem} (only a resumed case resumes, every connection but each client's first)")
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, **summary}, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
