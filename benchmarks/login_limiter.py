"""How many password guesses reach PAM per minute, in real time, against the broker's login limits.

Runs the real broker app (web.make_app, BootFlow, the real LoginLimiter with the configuration's default
limits: user_failures 5, address_failures 30, window 300 s, failure_delay 2 s) on 127.0.0.1, and three
attackers at once, each against its own broker (its own limiter):

  single-user     one user name, guessed from one address
  cycling-users   one address, a new user name for every guess
  many-addresses  one user name, guessed from many addresses (127.0.0.2 ... : Linux routes 127/8 on lo)

Each attacker keeps `--connections` requests in flight for `--duration` seconds. The authenticator is a
counting fake that always says "wrong" after `--pam-delay` seconds (default 2, pam_unix's delay on a failed
password), so guesses overlap in PAM as they do in production: what is measured is the limiter and the
tarpit, not PAM's speed. (With a fake that answers at once no two guesses were ever in PAM together, and
the limiter looked tighter than it was.)

    .venv/bin/python benchmarks/login_limiter.py                      # 10 minutes, window 300 s
    .venv/bin/python benchmarks/login_limiter.py --duration 120 --window 30 --json out.json
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stand_ins import benchmark_config, start_broker  # noqa: E402  benchmarks/stand_ins.py: run as python benchmarks/NAME.py


class CountingAuthenticator:
    """Always wrong, after `delay` seconds (as pam_unix is); remembers when each guess reached it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.times: list[float] = []

    async def authenticate(self, user: str, password: str) -> bool:
        self.times.append(time.monotonic())
        await asyncio.sleep(self.delay)
        return False


@dataclass
class Scenario:
    name: str
    what: str
    bound_per_window: int  # what the limits allow through per window, in the steady state
    authenticator: CountingAuthenticator
    statuses: Counter[int] = field(default_factory=Counter)
    sent: int = 0


async def start_limited_broker(scenario: Scenario, window: float, connections: int) -> tuple[web.AppRunner, int]:
    # Only the window is changed (for a quick run); the counts and the tarpit are the defaults.
    cfg = benchmark_config(limits={"window": window}, connections_per_address=max(32, connections))
    return await start_broker(cfg, scenario.authenticator)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def attack(scenario: Scenario, port: int, duration: float, connections: int, addresses: int) -> None:
    url = f"http://127.0.0.1:{port}/login.ipxe"
    if scenario.name == "many-addresses":
        sources = [f"127.0.{i // 250}.{2 + i % 250}" for i in range(addresses)]
    else:
        sources = ["127.0.0.1"]
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(s, 0), limit=0)) for s in sources]
    deadline = time.monotonic() + duration
    counter = 0

    async def worker(n: int) -> None:
        nonlocal counter
        while time.monotonic() < deadline:
            counter += 1
            user = f"user{counter}" if scenario.name == "cycling-users" else "alice"
            session = sessions[counter % len(sessions)]
            try:
                async with session.get(url, headers=basic(user, f"guess{counter}")) as response:
                    await response.read()
                    scenario.statuses[response.status] += 1
            except aiohttp.ClientError:
                scenario.statuses[0] += 1
            scenario.sent += 1

    try:
        await asyncio.gather(*(worker(n) for n in range(connections)))
    finally:
        for session in sessions:
            await session.close()


def summary(scenario: Scenario, started: float, duration: float, window: float) -> dict[str, Any]:
    times = [t - started for t in scenario.authenticator.times]
    steady = [t for t in times if t >= window]
    steady_minutes = (duration - window) / 60 if duration > window else None
    return {
        "scenario": scenario.name,
        "what": scenario.what,
        "sent": scenario.sent,
        "sent_per_minute": round(scenario.sent / (duration / 60), 1),
        "reached_pam": len(times),
        "reached_pam_per_minute": round(len(times) / (duration / 60), 2),
        "reached_pam_first_window": sum(1 for t in times if t < window),
        "steady_per_minute": round(len(steady) / steady_minutes, 2) if steady_minutes else None,
        "bound_per_minute": round(scenario.bound_per_window / (window / 60), 2),
        "statuses": {str(k): v for k, v in sorted(scenario.statuses.items())},
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds each attacker runs (default 600)")
    parser.add_argument("--window", type=float, default=300.0, help="the limiter's window in seconds (default 300, the configuration's default)")
    parser.add_argument("--connections", type=int, default=16, help="requests each attacker keeps in flight (default 16)")
    parser.add_argument("--addresses", type=int, default=200, help="source addresses of many-addresses (default 200)")
    parser.add_argument("--pam-delay", type=float, default=2.0,
                        help="seconds the fake authenticator takes to say 'wrong' (default 2, pam_unix's failure delay)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    logging.getLogger("broker").setLevel(logging.ERROR)  # a warning per refused guess otherwise

    scenarios = [
        Scenario("single-user", "one user name from one address", 5, CountingAuthenticator(args.pam_delay)),
        Scenario("cycling-users", "one address, a new user name per guess", 30, CountingAuthenticator(args.pam_delay)),
        Scenario("many-addresses", f"one user name from {args.addresses} addresses", 5,
                 CountingAuthenticator(args.pam_delay)),
    ]
    print(f"login limiter benchmark: user_failures 5, address_failures 30, failure_delay 2 s (defaults); "
          f"window {args.window:g} s{' (the default)' if args.window == 300 else ' (SHORTENED from the default 300 s)'}; "
          f"{args.duration:g} s per attacker, {args.connections} requests in flight each", flush=True)
    print(f"the authenticator is a counting fake that says 'wrong' after {args.pam_delay:g} s: the limiter is what is "
          "measured", flush=True)
    runners = []
    ports = []
    for scenario in scenarios:
        runner, port = await start_limited_broker(scenario, args.window, args.connections)
        runners.append(runner)
        ports.append(port)
    started = time.monotonic()
    try:
        await asyncio.gather(*(attack(s, p, args.duration, args.connections, args.addresses) for s, p in zip(scenarios, ports)))
    finally:
        for runner in runners:
            await runner.cleanup()
    duration = time.monotonic() - started
    results = [summary(s, started, duration, args.window) for s in scenarios]

    header = f"{'scenario':16} {'sent':>7} {'sent/min':>9} {'to PAM':>7} {'PAM/min':>8} {'1st window':>10} {'steady/min':>10} {'limit/min':>9}  statuses"
    print(header)
    for r in results:
        steady = "-" if r["steady_per_minute"] is None else f"{r['steady_per_minute']:.2f}"
        print(f"{r['scenario']:16} {r['sent']:7d} {r['sent_per_minute']:9.1f} {r['reached_pam']:7d} "
              f"{r['reached_pam_per_minute']:8.2f} {r['reached_pam_first_window']:10d} {steady:>10} "
              f"{r['bound_per_minute']:9.2f}  {r['statuses']}")
    print(f"measured over {duration:.0f} s of real time; steady/min counts guesses after the first window")
    if args.json:
        args.json.write_text(json.dumps({
            "window": args.window, "window_is_default": args.window == 300, "duration": duration,
            "connections": args.connections,
            "authenticator": f"counting fake, always wrong after {args.pam_delay:g} s", "pam_delay": args.pam_delay,
            "limits": {"user_failures": 5, "address_failures": 30, "failure_delay": 2.0}, "results": results,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
