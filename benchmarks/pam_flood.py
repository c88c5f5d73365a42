"""Good logins during a flood of wrong passwords: how many are served, how long they take, how many are
told "busy" and how many would have been given up by iPXE (120 s without an answer).

Runs the real broker app (web.make_app, BootFlow, the real LoginLimiter with the default limits, the real
PamAuthenticator with `--pam-concurrency` threads) on 127.0.0.1. Only python-pam's handle is a stand-in,
which holds its PAM thread as pam_unix does: `--hash` seconds for every conversation (yescrypt), and
`--fail-delay` more after a wrong password (pam_unix's failure delay, 2 s; 0 is pam_unix's `nodelay`, as
scripts/pam.d/bootbroker now has it, where the broker's own tarpit, failure_delay, holds no thread).

The flood keeps `--flood` wrong guesses in flight from `--addresses` addresses (127.0.1.x: Linux routes
127/8 on lo), each guess a new user name; one good user logs in every `--good-every` seconds from an
address of its own (127.0.2.x), each given up after `--give-up` seconds. Both run for `--duration` s.

    .venv/bin/python benchmarks/pam_flood.py                     # pam_unix as it was: 2 s in the thread
    .venv/bin/python benchmarks/pam_flood.py --fail-delay 0      # pam_unix nodelay
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pam
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.web import pam_auth  # noqa: E402
from stand_ins import benchmark_config, start_broker  # noqa: E402  benchmarks/stand_ins.py: run as python benchmarks/NAME.py

GOOD_PASSWORD = "the-right-one"


class PamUnixLike:
    """python-pam's handle as pam_unix behaves: a blocking hash, and a blocking delay after a failure."""

    hash_seconds = 0.02
    fail_delay = 2.0

    def __init__(self) -> None:
        self.reason = "Authentication failure"

    def authenticate(self, user: str, password: str, service: str, resetcreds: bool) -> bool:
        time.sleep(self.hash_seconds)
        if password == GOOD_PASSWORD:
            return True
        time.sleep(self.fail_delay)
        return False


async def start_pam_broker(concurrency: int) -> tuple[web.AppRunner, int, pam_auth.PamAuthenticator]:
    cfg = benchmark_config(pam_concurrency=concurrency)  # default limits
    assert cfg.broker is not None
    authenticator = pam_auth.PamAuthenticator("bootbroker", cfg.broker.pam_concurrency)
    runner, port = await start_broker(cfg, authenticator)
    return runner, port, authenticator


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def flood(url: str, deadline: float, in_flight: int, addresses: int, statuses: Counter[int]) -> None:
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.1.{2 + i % 250}", 0), limit=0))
                for i in range(addresses)]
    counter = 0

    async def worker(n: int) -> None:
        nonlocal counter
        while time.monotonic() < deadline:
            counter += 1
            try:
                async with sessions[counter % len(sessions)].get(url, headers=basic(f"guess{counter}", "wrong")) as r:
                    await r.read()
                    statuses[r.status] += 1
            except aiohttp.ClientError:
                statuses[0] += 1

    try:
        await asyncio.gather(*(worker(n) for n in range(in_flight)))
    finally:
        for session in sessions:
            await session.close()


async def good_logins(url: str, deadline: float, every: float, give_up: float) -> list[tuple[str, float]]:
    """(outcome, seconds) per good login: served, busy, other (another status) or given_up."""
    results: list[tuple[str, float]] = []

    async def one(i: int) -> None:
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.2.{2 + i % 250}", 0))
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=give_up)) as session:
            try:
                async with session.get(url, headers=basic(f"good{i}", GOOD_PASSWORD)) as r:
                    await r.read()
                    outcome = {200: "served", 503: "busy"}.get(r.status, f"status {r.status}")
            except (TimeoutError, aiohttp.ClientError):
                outcome = "given_up"
        results.append((outcome, time.monotonic() - started))

    tasks = []
    i = 0
    while time.monotonic() < deadline:
        tasks.append(asyncio.create_task(one(i)))
        i += 1
        await asyncio.sleep(every)
    await asyncio.gather(*tasks)
    return results


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of flood and good logins (default 90)")
    parser.add_argument("--flood", type=int, default=256, help="wrong guesses kept in flight (default 256)")
    parser.add_argument("--addresses", type=int, default=200, help="the flood's source addresses (default 200)")
    parser.add_argument("--good-every", type=float, default=1.0, help="seconds between good logins (default 1)")
    parser.add_argument("--give-up", type=float, default=120.0,
                        help="seconds a good login waits for its answer (default 120, iPXE's HTTP idle timeout)")
    parser.add_argument("--pam-concurrency", type=int, default=4, help="PAM threads (default 4, the default)")
    parser.add_argument("--hash", type=float, default=0.02, help="seconds each conversation holds its thread (default 0.02)")
    parser.add_argument("--fail-delay", type=float, default=2.0,
                        help="further seconds a failure holds its thread (default 2, pam_unix; 0: nodelay)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    logging.getLogger("broker").setLevel(logging.ERROR)  # a warning per refused guess otherwise
    PamUnixLike.hash_seconds, PamUnixLike.fail_delay = args.hash, args.fail_delay
    pam.pam = PamUnixLike  # what pam_auth calls for a handle

    runner, port, authenticator = await start_pam_broker(args.pam_concurrency)
    url = f"http://127.0.0.1:{port}/login.ipxe"
    statuses: Counter[int] = Counter()
    print(f"PAM flood: {args.flood} wrong guesses in flight from {args.addresses} addresses, a good login every "
          f"{args.good_every:g} s, for {args.duration:g} s; {args.pam_concurrency} PAM threads, {args.hash:g} s per "
          f"conversation, {args.fail_delay:g} s more per failure in the thread", flush=True)
    deadline = time.monotonic() + args.duration
    try:
        flooding = asyncio.create_task(flood(url, deadline, args.flood, args.addresses, statuses))
        good = await good_logins(url, deadline, args.good_every, args.give_up)
        await flooding
    finally:
        await runner.cleanup()
        authenticator.close()
    outcomes = Counter(outcome for outcome, _ in good)
    served = [seconds for outcome, seconds in good if outcome == "served"]
    busy = [seconds for outcome, seconds in good if outcome == "busy"]
    served_seconds = {"p50": percentile(served, 0.5), "p99": percentile(served, 0.99), "max": max(served, default=None)}
    result = {
        "good_logins": len(good),
        "outcomes": dict(outcomes),
        "served_seconds": served_seconds,
        "busy_seconds_max": max(busy, default=None),
        "flood_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "flood_sent": sum(statuses.values()),
        "settings": vars(args) | {"json": None},
    }

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    print(f"good logins: {len(good)}; served {outcomes['served']}, busy {outcomes['busy']}, "
          f"given up {outcomes['given_up']}, other {len(good) - outcomes['served'] - outcomes['busy'] - outcomes['given_up']}")
    print(f"served in: p50 {shown(served_seconds['p50'])}, p99 {shown(served_seconds['p99'])}, "
          f"max {shown(served_seconds['max'])}; busy answered within {shown(max(busy, default=None))}")
    print(f"flood: {result['flood_sent']} guesses answered, statuses {result['flood_statuses']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
