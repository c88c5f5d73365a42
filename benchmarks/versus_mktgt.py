"""Per-login cost of bootbroker's helper against the mktgt approach, side by side, as targets pile up.

Runs as root inside the lab VM (see the README's Benchmarks section). Both serve the same golden image
from the same filesystem:
- bootbroker: `bootbroker helper` running as a daemon; a login is the broker's call, `ensure_session` over
  the helper's Unix socket (overlay and target if missing, the previous ACL replaced, a fresh secret);
- mktgt: benchmarks/mktgt/mktgt, the article's per-login script (tgtd, dm-snapshot over loop devices,
  tgtadm, serialised with flock), run as its web app runs it: one process per login (without sudo, which
  the lab does not have: the article's figure would be a little higher).
At each count of existing targets (`--counts`), both are filled to that many users, then timed: a warm
login (a user who has a target: new credentials) and a cold one (a new user: overlay and target too).
Prints p50 and max of `--repeat` samples and the ratio mktgt / bootbroker; writes JSON with --json. At the
end a real initiator (iscsi-inq) logs in with each side's last credentials, so both were really serving.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from broker.helper_client import HelperClient
from timing import timed  # benchmarks/timing.py: run as python benchmarks/NAME.py

MKTGT = Path(__file__).resolve().parent / "mktgt" / "mktgt"
TGT_CONTROL_PORT = "7"
TGT_PORTAL = "0.0.0.0:3261"  # LIO holds 3260 in the same VM
GOLDEN_MIB = 16


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Mktgt:
    """The mktgt approach: tgtd, and the per-login script."""

    def __init__(self, root: Path, golden: Path) -> None:
        self.root = root
        self.env = dict(os.environ, MKTGT_ROOT=str(root), MKTGT_CONTROL_PORT=TGT_CONTROL_PORT)
        (root / "bench.cow").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(golden, root / "bench.img")
        if subprocess.run(["tgtadm", "-C", TGT_CONTROL_PORT, "--op", "show", "--mode", "sys"],
                          capture_output=True, check=False).returncode != 0:
            subprocess.run(["tgtd", "-C", TGT_CONTROL_PORT, "--iscsi", f"portal={TGT_PORTAL}"], check=True)
            time.sleep(1)

    def login(self, user: str) -> str:
        done = subprocess.run([str(MKTGT), "bench", user], env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not done.stdout:
            raise RuntimeError(f"mktgt bench {user} failed: {done.stderr.strip()}")
        return done.stdout

    def check(self, user: str, password: str) -> None:
        hostname = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
        target = "iqn." + ".".join(reversed(hostname.split("."))) + f":bench-{user}"
        subprocess.run(["iscsi-inq", f"iscsi://{user}%{password}@127.0.0.1:3261/{target}/1"], check=True,
                       capture_output=True)


class Bootbroker:
    """`bootbroker helper` as a daemon on its own store, and the broker's client of it."""

    def __init__(self, store: Path, backend: str, golden: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.config = store / "bench.toml"
        socket = store / "helper.sock"
        self.config.write_text(f"""
[store]
path = "{store}"
backend = "{backend}"

[helper]
socket = "{socket}"

[iscsi]
domain = "versus.lab.example.org"
date = "2026-11"
portals = ["0.0.0.0:3260"]
advertise = ["127.0.0.1:3260"]

[images.bench]
users = ["*"]
""")
        for group in ("bootbroker", "bootbroker-helpdesk"):
            subprocess.run(["groupadd", "-f", group], check=True)
        self.process = subprocess.Popen([sys.executable, "-m", "broker.cli", "--config", str(self.config), "helper"],
                                        stderr=subprocess.DEVNULL)
        self.client = HelperClient(socket, timeout=120)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client.call("health")
                break
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("bootbroker helper did not start") from None
                time.sleep(0.5)
        subprocess.run([sys.executable, "-m", "broker.cli", "--config", str(self.config), "images", "publish",
                        "bench", str(golden)], check=True, capture_output=True)

    def login(self, user: str) -> dict[str, object]:
        grant: dict[str, object] = self.client.call("ensure_session", image="bench", user=user)
        return grant

    def check(self, grant: dict[str, object]) -> None:
        url = f"iscsi://{grant['chap_user']}%{grant['chap_secret']}@127.0.0.1:3260/{grant['target_iqn']}/0"
        subprocess.run(["iscsi-inq", "-i", str(grant["initiator_iqn"]), url], check=True, capture_output=True)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="an empty directory for both stores (ext4 for dm-snapshot)")
    parser.add_argument("--backend", default="dm-snapshot", choices=["reflink", "dm-snapshot"],
                        help="bootbroker's backend (dm-snapshot: the same storage as mktgt's)")
    parser.add_argument("--counts", default="10,100,500", help="numbers of existing targets to measure at")
    parser.add_argument("--repeat", type=int, default=9, help="samples per figure")
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args(argv)

    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    golden = root / "golden.img"
    with open(golden, "wb") as f:
        f.write(os.urandom(GOLDEN_MIB * 2**20))
    mktgt = Mktgt(root / "mktgt", golden)
    bootbroker = Bootbroker(root / "bootbroker", args.backend, golden)
    rows = []
    filled = 0
    try:
        for count in (int(c) for c in args.counts.split(",")):
            started = time.perf_counter()
            while filled < count:
                bootbroker.login(f"filler{filled}")
                mktgt.login(f"filler{filled}")
                filled += 1
            say(f"  {count} targets on each side (filled in {time.perf_counter() - started:.0f} s)")
            row: dict[str, object] = {"targets": count}
            for name, side in (("bootbroker", bootbroker), ("mktgt", mktgt)):
                side.login("warm")
                row[f"{name}_warm"] = timed(lambda: side.login("warm"), args.repeat)
                cold = iter(f"cold{count}x{i}" for i in range(args.repeat))
                row[f"{name}_cold"] = timed(lambda: side.login(next(cold)), args.repeat)
            rows.append(row)
            say(f"  {count}: " + ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in row.items()
                                           if isinstance(v, list)))
        mktgt.check("warm", mktgt.login("warm"))
        bootbroker.check(bootbroker.login("warm"))
    finally:
        bootbroker.stop()

    print(f"{'targets':>8} {'login':>5} {'bootbroker p50/max':>20} {'mktgt p50/max':>20} {'mktgt / bootbroker':>19}")
    for row in rows:
        for kind in ("warm", "cold"):
            ours, theirs = row[f"bootbroker_{kind}"], row[f"mktgt_{kind}"]
            assert isinstance(ours, list) and isinstance(theirs, list)
            print(f"{row['targets']:>8} {kind:>5} {_p50_max(ours):>20} {_p50_max(theirs):>20} "
                  f"{statistics.median(theirs) / statistics.median(ours):>18.1f}x")
    print(f"({args.repeat} samples each; bootbroker {args.backend}; under TCG emulation in the lab VM; "
          "both sides' last credentials logged in with iscsi-inq)")
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": args.backend, "rows": rows}, indent=2))
    return 0


def _p50_max(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.0f}/{max(samples) * 1000:.0f} ms"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
