"""The benchmark's work inside the lab VM, one step per subcommand (lab/bench.py runs them as root there).

Each step prints one JSON document on stdout; progress goes to stderr. Two sides serve the same golden
image from the same kind of filesystem, on the VM's kernel:
- bootbroker: the deployment's running helper, asked over its Unix socket as the broker asks it
  (`ensure_session`: overlay and target if missing, the previous ACL replaced, a fresh CHAP secret);
- mktgt: benchmarks/mktgt/mktgt, the Fedora article's per-login script (tgtd on iSCSI port 3261, dm-snapshot
  over loop devices, tgtadm, serialised with flock), one process per login as its web app runs it (without
  sudo, which the lab does not have: the article's figure would be a little higher).

  mktgt-setup   the mktgt side's image and overlay directory (tgtd itself is started by the caller)
  fill          users filler<FIRST>..filler<N-1> log in once each on one side: N targets in all
  logins        warm logins (a user with a target: new credentials) and cold ones (new users), timed
  overlays      overlay creation for a 1 GiB and a 100 GiB sparse golden image, each approach
  io            qemu-img bench through iSCSI on users' disks each way they are exported, and on the golden image
                exported the same way (benchmarks/target_io.py)
  storm         users <PREFIX>0..<N-1> log in through the broker and boot, all at once (password on stdin)
  boot-golden   a golden image for `boots`: the recorded boot's disk, random bytes wherever the boot reads
  boots         users <PREFIX>0..<N-1> get their disks on one side, then replay a real boot's I/O all at once
                through kernel iSCSI sessions (benchmarks/boot_replay.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.helper.backends.dmsnapshot import DmSnapshotBackend
from broker.helper.backends.reflink import ReflinkBackend
from broker.shared.helper_client import HelperClient
from broker.helper.lio import FileioCache
import boot_replay  # benchmarks/boot_replay.py
import target_io  # benchmarks/target_io.py
from timing import say, timed  # benchmarks/timing.py: run as python benchmarks/NAME.py
from visits import Client, all_at_once, failures

MKTGT = Path(__file__).resolve().parent / "mktgt" / "mktgt"
MKTGT_CONTROL_PORT = "7"  # tgtd's control port (the caller starts tgtd with -C 7)
MKTGT_ISCSI_PORT = 3261  # LIO holds 3260 in the same VM
GIB = 2**30


class Bootbroker:
    """The running helper, asked over its socket as the broker asks it."""

    def __init__(self, socket_path: str, image: str) -> None:
        self.client = HelperClient(Path(socket_path), timeout=300)
        self.image = image

    def login(self, user: str) -> dict[str, Any]:
        grant: dict[str, Any] = self.client.call("ensure_session", image=self.image, user=user)
        return grant


class Mktgt:
    """The per-login script on its own image and overlay directory, `<root>/<instance>.img` and `.cow/`."""

    def __init__(self, root: str, instance: str = "bench") -> None:
        self.root = Path(root)
        self.instance = instance
        self.env = dict(os.environ, MKTGT_ROOT=root, MKTGT_CONTROL_PORT=MKTGT_CONTROL_PORT)

    def setup(self, golden: Path) -> None:
        (self.root / f"{self.instance}.cow").mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "--sparse=always", str(golden), str(self.root / f"{self.instance}.img")], check=True)

    def login(self, user: str) -> str:
        """One run of the script; the user's new CHAP password."""
        done = subprocess.run([str(MKTGT), self.instance, user], env=self.env, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0 or not done.stdout:
            raise RuntimeError(f"mktgt {self.instance} {user} failed: {done.stderr.strip()}")
        return done.stdout

    def target(self, user: str) -> str:
        """The IQN the script gives the user's target (from the host name, as the article does)."""
        return "iqn." + ".".join(reversed(socket.gethostname().split("."))) + f":{self.instance}-{user}"


def side(args: argparse.Namespace) -> Bootbroker | Mktgt:
    return Bootbroker(args.socket, args.image) if args.side == "bootbroker" else Mktgt(args.mktgt_root)


def cmd_mktgt_setup(args: argparse.Namespace) -> Any:
    Mktgt(args.mktgt_root, args.instance).setup(Path(args.golden))
    return {"root": args.mktgt_root}


def cmd_boot_golden(args: argparse.Namespace) -> Any:
    boot_replay.make_golden(Path(args.golden), Path(args.iolog), args.size)
    distinct, _, _ = boot_replay.working_set(Path(args.iolog))
    return {"working_set": distinct}


def cmd_boots(args: argparse.Namespace) -> Any:
    """Users PREFIX0.. each get their disk (a login on the side: overlay, target, credentials), then replay the
    boot at once; the figures of benchmarks/boot_replay.py."""
    users = [f"{args.prefix}{i}" for i in range(args.count)]
    disks: list[boot_replay.Disk] = []
    if args.side == "bootbroker":
        broker = Bootbroker(args.socket, args.image)
        for user in users:
            g = broker.login(user)
            disks.append(boot_replay.Disk(g["target_iqn"], g["initiator_iqn"], g["chap_user"], g["chap_secret"]))
        portal = "127.0.0.1:3260"
    else:
        mktgt = Mktgt(args.mktgt_root, args.instance)
        for user in users:
            secret = mktgt.login(user)
            disks.append(boot_replay.Disk(mktgt.target(user), f"iqn.2026-11.org.example.lab:mktgt-{user}", user,
                                          secret, lun=1))
        portal = f"127.0.0.1:{MKTGT_ISCSI_PORT}"
    say(f"    {args.side}: {len(disks)} disks ready; replaying the boot on all at once")
    return boot_replay.storm(portal, disks, Path(args.iolog), args.store_disk)


def cmd_fill(args: argparse.Namespace) -> Any:
    login = side(args).login
    started = time.perf_counter()
    for i in range(args.first, args.to):
        login(f"filler{i}")
        if (i + 1) % 500 == 0:
            say(f"    {args.side}: {i + 1} targets ({time.perf_counter() - started:.0f} s)")
    return {"targets": args.to, "seconds": time.perf_counter() - started}


def cmd_logins(args: argparse.Namespace) -> Any:
    login = side(args).login
    login(f"warm-{args.tag}")
    warm = timed(lambda: login(f"warm-{args.tag}"), args.repeat)
    cold_users = iter(f"cold-{args.tag}-{i}" for i in range(args.repeat))
    cold = timed(lambda: login(next(cold_users)), args.repeat)
    return {"warm": warm, "cold": cold}


# overlays

def sparse_golden(path: Path, size: int) -> None:
    """A sparse disk of `size` bytes with the same data at its start and end whatever its size: 32 MiB
    (boot sector, system files) and 1 MiB (a backup partition table)."""
    with open(path, "wb") as f:
        f.write(os.urandom(32 * 2**20))
        f.seek(size - 2**20)
        f.write(os.urandom(2**20))


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def cmd_overlays(args: argparse.Namespace) -> Any:
    """Per approach and golden size: seconds to make one user's overlay ready to export (p50 of --repeat),
    and the bytes it takes."""
    results: dict[str, Any] = {}
    for name, size in (("1GiB", GIB), ("100GiB", 100 * GIB)):
        row: dict[str, Any] = {}
        for label, directory, backend in (("reflink", Path(args.reflink_dir), ReflinkBackend()),
                                          ("dm-snapshot", Path(args.dm_dir), DmSnapshotBackend(cow_percent=20))):
            directory.mkdir(parents=True, exist_ok=True)
            golden = directory / f"golden-{name}.img"
            sparse_golden(golden, size)
            made: list[Path] = []

            def make() -> None:
                work = directory / f"overlay-{name}-{len(made)}"
                work.mkdir()
                backend.create(golden, work)
                backend.attach(golden, work, f"bench-{label}-{name}-{len(made)}")
                made.append(work)

            seconds = timed(make, args.repeat)
            row[f"bootbroker_{label}"] = {"seconds": seconds, "bytes": backend.used_bytes(made[0])}
            for i, work in enumerate(made):
                backend.detach(work, f"bench-{label}-{name}-{i}")
        mktgt = Mktgt(args.mktgt_root, instance=f"ov{name.lower()}")
        (mktgt.root / f"{mktgt.instance}.cow").mkdir(parents=True, exist_ok=True)
        sparse_golden(mktgt.root / f"{mktgt.instance}.img", size)
        users = iter(f"user{i}" for i in range(args.repeat))
        seconds = timed(lambda: mktgt.login(next(users)), args.repeat)
        row["mktgt"] = {"seconds": seconds, "bytes": allocated(mktgt.root / f"{mktgt.instance}.cow" / "user0")}
        results[name] = row
        say(f"    overlays of a {name} golden image: " + ", ".join(
            f"{k} {statistics.median(v['seconds']) * 1000:.0f} ms, {v['bytes']} bytes" for k, v in row.items()))
    return results


# I/O


def cmd_io(args: argparse.Namespace) -> Any:
    """Each workload on each kind of disk (benchmarks/target_io.py): {"disks": {name: {workload: [MiB/s...]}},
    "pairs": [[overlay, golden target], ...]}."""
    golden = Path(args.golden)
    size = golden.stat().st_size
    initiator = "iqn.2026-11.org.example.lab:bench-client"
    disks: dict[str, Any] = {}
    pairs: list[tuple[str, str]] = []
    lio_portal = "127.0.0.1:3260"

    def measured(name: str, fresh: Callable[[], target_io.Endpoint]) -> None:
        disks[name] = target_io.measure(name, fresh, size, args.repeat)

    made = target_io.Disks(golden, Path(args.work_dir), lio_portal, initiator)
    try:
        for cache in FileioCache:
            measured(f"golden fileio {cache.value}", made.golden_fileio(cache))
            measured(f"reflink {cache.value}", made.reflink(cache))
            pairs.append((f"reflink {cache.value}", f"golden fileio {cache.value}"))
        measured("golden block", made.golden_block())
    finally:
        made.close()

    broker = Bootbroker(args.socket, args.image)
    users = iter(f"io-{i}" for i in range(1000))

    def helper_overlay() -> target_io.Endpoint:
        g = broker.login(next(users))
        return target_io.Endpoint(lio_portal, g["target_iqn"], g["lun"], g["chap_user"], g["chap_secret"],
                                  g["initiator_iqn"])

    measured(args.layout, helper_overlay)
    pairs.append((args.layout, "golden block"))

    # mktgt: users' snapshots through the script; the golden target on a plain copy, with tgtadm
    mktgt = Mktgt(args.mktgt_root)
    plain = mktgt.root / "golden-target.img"
    shutil.copyfile(golden, plain)
    tgtadm = ["tgtadm", "--lld", "iscsi", "-C", MKTGT_CONTROL_PORT]
    tid, golden_iqn = "30000", f"{target_io.PREFIX}:golden-tgt"
    for step in (["--op", "new", "--mode", "target", "--tid", tid, "--targetname", golden_iqn],
                 ["--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", "1", "--backing-store", str(plain)],
                 ["--op", "bind", "--mode", "target", "--tid", tid, "--initiator-address", "ALL"],
                 ["--op", "new", "--mode", "account", "--user", "golden", "--password", target_io.GOLDEN_SECRET],
                 ["--op", "bind", "--mode", "account", "--tid", tid, "--user", "golden"]):
        subprocess.run(tgtadm + step, check=True, capture_output=True)
    tgt_portal = f"127.0.0.1:{MKTGT_ISCSI_PORT}"

    def tgt_overlay() -> target_io.Endpoint:
        user = next(users)
        return target_io.Endpoint(tgt_portal, mktgt.target(user), 1, user, mktgt.login(user), initiator)

    golden_tgt = target_io.Endpoint(tgt_portal, golden_iqn, 1, "golden", target_io.GOLDEN_SECRET, initiator)
    measured("golden tgtd", lambda: golden_tgt)
    measured("mktgt", tgt_overlay)
    pairs.append(("mktgt", "golden tgtd"))
    return {"disks": disks, "pairs": pairs, "flush_every": target_io.FLUSH_EVERY}


def cmd_storm(args: argparse.Namespace) -> Any:
    """Every user's login and boot at the same moment, from inside the VM: seconds to the last answer, each
    visit's status and time, the distinct failures, and the slowest served user's boot script."""
    client = Client(args.url, args.cafile, args.server_hostname)
    password = sys.stdin.readline().rstrip("\n")
    users = [f"{args.prefix}{i}" for i in range(args.count)]
    started = time.perf_counter()
    visits = asyncio.run(all_at_once(client, users, password))
    seconds = time.perf_counter() - started
    served = [v for v in visits if v.served]
    return {
        "seconds_to_last": seconds,
        "seconds": [v.seconds for v in served],
        "served": len(served),
        "failures": failures([v for v in visits if not v.served]),
        "slowest_script": max(served, key=lambda v: v.seconds).script if served else None,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", help="the bootbroker helper's socket")
    parser.add_argument("--image", default="demo", help="the bootbroker image users log in to")
    parser.add_argument("--mktgt-root", help="the mktgt side's directory (its image and overlays)")
    steps = parser.add_subparsers(dest="step", required=True)
    parser.add_argument("--instance", default="bench", help="the mktgt side's image name")
    setup = steps.add_parser("mktgt-setup")
    setup.add_argument("--golden", required=True)
    setup.set_defaults(run=cmd_mktgt_setup)
    golden = steps.add_parser("boot-golden")
    golden.add_argument("--golden", required=True, help="the file to make")
    golden.add_argument("--iolog", required=True)
    golden.add_argument("--size", type=int, required=True, help="bytes: the recorded disk's size")
    golden.set_defaults(run=cmd_boot_golden)
    boots = steps.add_parser("boots")
    boots.add_argument("side", choices=["bootbroker", "mktgt"])
    boots.add_argument("--iolog", required=True)
    boots.add_argument("--prefix", required=True, help="user names: PREFIX0, PREFIX1, ...")
    boots.add_argument("--count", type=int, required=True)
    boots.add_argument("--store-disk", required=True, help="the store's block device in /sys/block (vdb)")
    boots.set_defaults(run=cmd_boots)
    fill = steps.add_parser("fill")
    fill.add_argument("side", choices=["bootbroker", "mktgt"])
    fill.add_argument("--first", type=int, default=0)
    fill.add_argument("--to", type=int, required=True)
    fill.set_defaults(run=cmd_fill)
    logins = steps.add_parser("logins")
    logins.add_argument("side", choices=["bootbroker", "mktgt"])
    logins.add_argument("--repeat", type=int, required=True)
    logins.add_argument("--tag", required=True, help="names this round's users")
    logins.set_defaults(run=cmd_logins)
    overlays = steps.add_parser("overlays")
    overlays.add_argument("--reflink-dir", required=True, help="on btrfs or XFS")
    overlays.add_argument("--dm-dir", required=True, help="on any filesystem (ext4)")
    overlays.add_argument("--repeat", type=int, default=5)
    overlays.set_defaults(run=cmd_overlays)
    io = steps.add_parser("io")
    io.add_argument("--golden", required=True, help="the published golden image's file")
    io.add_argument("--work-dir", required=True, help="for the golden image's plain copy and the reflink clones "
                    "(on the golden image's filesystem: XFS or btrfs)")
    io.add_argument("--layout", required=True, help="the running helper's backend, as the figures name it")
    io.add_argument("--repeat", type=int, default=3)
    io.set_defaults(run=cmd_io)
    storm = steps.add_parser("storm")
    storm.add_argument("--url", required=True, help="the broker, as https://ADDRESS:PORT")
    storm.add_argument("--cafile", required=True, help="the broker's certificate")
    storm.add_argument("--server-hostname", required=True, help="the name in the certificate")
    storm.add_argument("--prefix", required=True, help="user names: PREFIX0, PREFIX1, ...")
    storm.add_argument("--count", type=int, required=True)
    storm.set_defaults(run=cmd_storm)
    args = parser.parse_args(argv)
    print(json.dumps(args.run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
