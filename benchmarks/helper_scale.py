"""Login cost against the number of existing targets, measured in-process against real LIO.

Runs as root inside the lab VM (see `scripts/lab bench`): fills LIO with real per-user targets through
`Helper.ensure_session`, then times cold logins (new overlay + target + ACL), warm logins (rotation: the
previous ACL deleted, a new one made) and resets (target and backstore deleted) at each size. Prints a
table with ratios to the smallest size; writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from broker.access import NssDirectory
from broker.backends import make_backend
from broker.config import parse
from broker.helper import Helper
from broker.lio import Lio
from timing import timed  # benchmarks/timing.py: run as python benchmarks/NAME.py


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", required=True, help="an empty directory on btrfs/XFS (or ext4 with dm-snapshot)")
    parser.add_argument("--backend", default="reflink", choices=["reflink", "dm-snapshot"])
    parser.add_argument("--counts", default="10,500,2000", help="target counts to measure at (ascending)")
    parser.add_argument("--repeat", type=int, default=9, help="samples per figure")
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args(argv)

    store = Path(args.store)
    store.mkdir(parents=True, exist_ok=True)
    config = parse({
        "store": {"path": str(store), "backend": args.backend},
        "iscsi": {"domain": "bench.lab.example.org", "date": "2026-11", "portals": ["0.0.0.0:3260"],
                  "advertise": ["10.0.2.15:3260"]},
        "images": {"bench": {"users": ["*"]}},
    }, "benchmark")
    helper = Helper(config, make_backend(config.store), Lio(config.iscsi.portals), NssDirectory())
    helper.start()
    golden = store / "golden.img"
    with open(golden, "wb") as f:
        f.write(os.urandom(16 * 2**20))
    helper.publish("bench", str(golden))

    rows = []
    filled = 0
    for count in (int(c) for c in args.counts.split(",")):
        started = time.perf_counter()
        while filled < count:
            helper.ensure_session("bench", f"filler{filled}")
            filled += 1
        print(f"  {count} targets in LIO (filled in {time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        helper.ensure_session("bench", "warm")
        warm = timed(lambda: helper.ensure_session("bench", "warm"), args.repeat)
        cold_users = iter(f"cold{count}-{i}" for i in range(args.repeat))
        cold = timed(lambda: helper.ensure_session("bench", next(cold_users)), args.repeat)
        reset_users = iter(f"cold{count}-{i}" for i in range(args.repeat))
        resets = timed(lambda: helper.reset("bench", next(reset_users)), args.repeat)
        rows.append({
            "targets": count,
            "warm_login_s": statistics.median(warm),
            "cold_login_s": statistics.median(cold),
            "reset_s": statistics.median(resets),
        })

    base = rows[0]
    print(f"{'targets':>8} {'warm login':>11} {'ratio':>6} {'cold login':>11} {'ratio':>6} {'reset':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['targets']:>8} {r['warm_login_s'] * 1000:>9.1f}ms {r['warm_login_s'] / base['warm_login_s']:>6.2f}"
              f" {r['cold_login_s'] * 1000:>9.1f}ms {r['cold_login_s'] / base['cold_login_s']:>6.2f}"
              f" {r['reset_s'] * 1000:>6.1f}ms {r['reset_s'] / base['reset_s']:>6.2f}")
    print(f"(median of {args.repeat}; backend {args.backend}; under TCG emulation in the lab VM)")
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": args.backend, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
