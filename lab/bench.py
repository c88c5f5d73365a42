"""`scripts/lab bench`: every figure of the benchmark in one run of the lab VM, side by side with the mktgt
approach (benchmarks/mktgt/mktgt, the Fedora article's per-login script), printed as a table and as JSON.

In the VM: a helper (reflink on XFS) on the kernel's LIO, the broker with real PAM (pam_unix, real
/etc/shadow), and tgtd for mktgt on iSCSI port 3261. From this host, an HTTPS client logs users in
through qemu's port forward, as workstations would: GET /login.ipxe with their password (PAM), then the
menu's boot link (the helper's overlay, target and ACL; the sanboot script). benchmarks/inside.py does the
work that belongs in the VM (filling, helper-only and mktgt timings, overlays, qemu-img bench over iSCSI,
and the storms' client, on the VM's loopback: through qemu's forward a storm would measure the forward).

1. logins at each count of existing targets: through the broker (PAM + boot script), and the per-login
   step alone on each side (bootbroker's ensure_session, one run of mktgt), warm and cold;
2. boot storms: N users, none with a disk yet, log in and boot at the same moment (from inside the VM);
3. overlay creation for a 1 GiB and a 100 GiB sparse golden image;
4. I/O through iSCSI on each kind of user disk against the golden image exported the same way
   (benchmarks/target_io.py; users' overlays from a dm-thin helper of its own);
5. boots: N users' workstations boot at once, each replaying a real OS boot's recorded disk I/O through a
   kernel iSCSI session on its own disk: dm-thin and reflink (each on a helper of its own) and mktgt's
   layout, every one from the same XFS disk, whose reads are counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.visits import Client, Visit, one_by_one
from lab.bench_report import summary
from lab.broker import HOST_NAME, BrokerDeployment, grant_from_script
from benchmarks.boot_replay import working_set
from lab.build import cache_dir, log
from lab.deployment import Deployment, clear_lio, iscsi_tool, prepare_accounts
from lab.vm import GUEST_PORTS, Lab

STORE = "/srv/xfs/bench"
MKTGT_ROOT = "/srv/xfs/mktgt"
GOLDEN = "/srv/xfs/golden.img"
GOLDEN_MIB = 256
FIRST_UID = 20000
STEP_TIMEOUT = 4 * 3600.0


STEPS = ("logins", "storms", "overlays", "io", "boots")
BOOT_LAYOUTS = ("dm-thin", "reflink", "mktgt")
BOOT_GOLDEN = "/srv/xfs/boot-golden.img"
STORE_DISK = "vdb"  # /srv/xfs: every store of the benchmark
IO_LAYOUT = "dm-thin"  # the default backend: its overlays in the io step


@dataclass(frozen=True)
class Options:
    steps: tuple[str, ...] = STEPS
    counts: tuple[int, ...] = (10, 500, 5000)
    mktgt_counts: tuple[int, ...] = (10, 500)
    repeat: int = 20
    storms: tuple[int, ...] = (100, 500)
    io_repeat: int = 2
    overlay_repeat: int = 5
    boots: tuple[int, ...] = (10, 50, 200)


class Bench:
    def __init__(self, lab: Lab, options: Options) -> None:
        self.lab = lab
        self.options = options
        self.helper = Deployment(lab, "reflink", STORE)
        self.broker = BrokerDeployment(self.helper, connections_per_address=4 * max(options.storms, default=1))
        self.password = ""
        self.client: Client | None = None  # from this host, through qemu's forward: one login at a time
        self.filled = {"bootbroker": 0, "mktgt": 0}

    def inside(self, *args: str, stdin: str | None = None) -> Any:
        """One step of benchmarks/inside.py in the VM; its JSON."""
        argv = [str(self.lab.python), "benchmarks/inside.py", "--socket", self.helper.socket,
                "--mktgt-root", MKTGT_ROOT, *args]
        return json.loads(self.lab.run(argv, stdin=stdin, timeout=STEP_TIMEOUT, cwd=str(self.lab.repo)).stdout)

    def set_up(self, users: list[str]) -> None:
        log(f"starting the helper, the broker and tgtd; a {GOLDEN_MIB} MiB golden image of random bytes")
        prepare_accounts(self.lab)
        clear_lio(self.lab)
        self.helper.install()
        self.helper.start()
        self.lab.run(["dd", "if=/dev/urandom", f"of={GOLDEN}", "bs=1M", f"count={GOLDEN_MIB}", "status=none"],
                     timeout=600)
        self.helper.cli("images", "publish", "demo", GOLDEN, "--no-check")  # random bytes, not a bootable disk
        self.broker.install(users=())
        self.add_users(users)
        self.broker.start()
        self.client = Client(f"https://127.0.0.1:{self.lab.broker_port}", str(self.broker.cafile), HOST_NAME)
        self.lab.spawn(["tgtd", "-f", "-C", "7", "--iscsi", "portal=0.0.0.0:3261"])
        self.inside("mktgt-setup", "--golden", GOLDEN)

    def add_users(self, users: list[str]) -> None:
        """Real accounts sharing one password: one is made with chpasswd (the site's hash), the others get
        its hash in /etc/passwd and /etc/shadow directly (hashing hundreds under TCG would take minutes)."""
        self.password = self.broker.add_user("benchproto")
        shadow = self.lab.run(["getent", "shadow", "benchproto"]).stdout.split(":")
        passwd = "".join(f"{u}:x:{FIRST_UID + i}:100::/nonexistent:/usr/sbin/nologin\n" for i, u in enumerate(users))
        entries = "".join(f"{u}:{shadow[1]}:{shadow[2]}:0:99999:7:::\n" for u in users)
        self.lab.run(["tee", "-a", "/etc/passwd"], stdin=passwd)
        self.lab.run(["tee", "-a", "/etc/shadow"], stdin=entries)
        for user in users:
            self.broker.passwords[user] = self.password
        log(f"{len(users)} accounts with real passwords (hash {shadow[1].split('$')[1]!r}, as chpasswd makes it)")

    def fill(self, count: int, mktgt: bool) -> None:
        """Both sides at once (they share the VM's two CPUs while filling; nothing is timed then)."""
        started = time.monotonic()
        spawned = None
        if mktgt and self.filled["mktgt"] < count:
            spawned = self.lab.spawn([str(self.lab.python), "benchmarks/inside.py", "--mktgt-root", MKTGT_ROOT,
                                      "fill", "mktgt", "--first", str(self.filled["mktgt"]), "--to", str(count)],
                                     cwd=str(self.lab.repo))
        if self.filled["bootbroker"] < count:
            self.inside("fill", "bootbroker", "--first", str(self.filled["bootbroker"]), "--to", str(count))
            self.filled["bootbroker"] = count
        if spawned is not None:
            status = self.lab.wait(spawned, timeout=STEP_TIMEOUT)
            if status.rc != 0:
                raise RuntimeError(f"filling mktgt failed:\n{status.output}")
            self.filled["mktgt"] = count
        log(f"  {count} targets on bootbroker" + (" and on mktgt" if mktgt else "") +
            f" (filled in {time.monotonic() - started:.0f} s)")

    def visits(self, users: list[str]) -> list[Visit]:
        assert self.client is not None
        client = self.client
        return asyncio.run(one_by_one(client, users, self.password))

    def logins(self, count: int) -> dict[str, Any]:
        """At `count` targets: login -> boot script through the broker, and each side's per-login step."""
        repeat = self.options.repeat
        warm_user = f"bw{count}"
        row: dict[str, Any] = {"targets": count}
        self.visits([warm_user])
        for kind, users in (("warm", [warm_user] * repeat), ("cold", [f"bc{count}-{i}" for i in range(repeat)])):
            visits = self.visits(users)
            failed = [v for v in visits if not v.served]
            if failed:
                raise RuntimeError(f"{len(failed)} login(s) not served: {failed[0]}")
            row[f"broker_{kind}"] = [v.seconds for v in visits]
            row[f"broker_{kind}_login"] = [v.login_seconds for v in visits]
        mktgt = count in self.options.mktgt_counts
        for side in ("bootbroker", "mktgt") if mktgt else ("bootbroker",):
            timings = self.inside("logins", side, "--repeat", str(repeat), "--tag", str(count))
            row[f"{side}_warm"], row[f"{side}_cold"] = timings["warm"], timings["cold"]
        log(f"  at {count} targets: " + ", ".join(
            f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in row.items() if isinstance(v, list)))
        return row

    def storm(self, size: int) -> dict[str, Any]:
        """`size` users log in and boot at once, from a client in the VM (qemu's forward would be the
        bottleneck); the broker's and PAM's CPU from /metrics before and after."""
        assert self.client is not None
        before = asyncio.run(self.client.metrics())
        storm = self.inside("storm", "--url", f"https://127.0.0.1:{GUEST_PORTS['broker']}", "--cafile",
                            self.broker.certificate, "--server-hostname", HOST_NAME, "--prefix", f"s{size}-",
                            "--count", str(size), stdin=self.password + "\n")
        after = asyncio.run(self.client.metrics())

        def delta(name: str) -> float:
            return after[name] - before[name]

        cpu, pam_cpu = delta("process_cpu_seconds_total"), delta("bootbroker_pam_cpu_seconds_total")
        result: dict[str, Any] = {
            "users": size, "served": storm["served"], "seconds_to_last": storm["seconds_to_last"],
            "per_user": summary(storm["seconds"]) if storm["seconds"] else None,
            "broker_cpu_seconds": cpu, "pam_cpu_seconds": pam_cpu,
            "pam_seconds": delta("bootbroker_pam_seconds_total"),
            "pam_conversations": delta("bootbroker_pam_conversations_total"),
            "broker_overhead": (cpu - pam_cpu) / pam_cpu if pam_cpu > 0 else None,
            "failures": storm["failures"],
        }
        if storm["slowest_script"]:  # a real initiator logs in with the last one's credentials
            grant = grant_from_script(storm["slowest_script"])
            result["last_grant_logs_in"] = iscsi_tool(self.lab, "iscsi-inq", grant).returncode == 0
        log(f"  storm of {size}: {storm['served']} served, the last after {storm['seconds_to_last']:.1f} s; broker "
            f"CPU {cpu:.1f} s, of which PAM {pam_cpu:.1f} s" + "".join(f"\n    not served: {f}" for f in storm["failures"][:5]))
        return result


    @contextmanager
    def own_helper(self, layout: str, golden: str) -> Iterator[Deployment]:
        """A helper of `layout` on a store of its own serving `golden` as image demo, while the main helper
        is stopped (another helper's start-up would remove its targets as strays); the main one is started
        again after."""
        self.helper.stop()
        clear_lio(self.lab)
        helper = Deployment(self.lab, layout, f"/srv/xfs/{layout}-helper")
        try:
            helper.install()
            helper.start()
            helper.cli("images", "publish", "demo", golden, "--no-check")
            yield helper
        finally:
            if helper.process is not None:
                helper.stop()
            clear_lio(self.lab)
            helper.remove_devices()
            helper.remove_store()
            self.helper.install()
            self.helper.start()

    def io(self) -> dict[str, Any]:
        """Each kind of disk against the golden image exported the same way; users' overlays from a helper
        on the default backend."""
        with self.own_helper(IO_LAYOUT, GOLDEN) as helper:
            figures: dict[str, Any] = self.inside(
                "--socket", helper.socket, "io", "--golden", GOLDEN, "--work-dir", "/srv/xfs/io", "--layout", IO_LAYOUT,
                "--repeat", str(self.options.io_repeat))
        return figures

    def boots(self) -> dict[str, Any]:
        """For each layout, 1 user alone then each N at once replay the boot."""
        iolog = boot_iolog()
        _, reach, _ = working_set(iolog)
        figures = self.inside("boot-golden", "--golden", BOOT_GOLDEN, "--iolog", str(iolog),
                              "--size", str(-(-reach // 2**20) * 2**20))
        result: dict[str, Any] = {"iolog": iolog.name, "working_set": figures["working_set"], "layouts": {}}
        for layout in BOOT_LAYOUTS:
            if layout == "mktgt":
                self.inside("--instance", "boot", "mktgt-setup", "--golden", BOOT_GOLDEN)
                result["layouts"][layout] = self._boot_storms(layout, iolog, ["--instance", "boot"])
                continue
            with self.own_helper(layout, BOOT_GOLDEN) as helper:
                result["layouts"][layout] = self._boot_storms(layout, iolog, ["--socket", helper.socket])
        return result

    def _boot_storms(self, layout: str, iolog: Path, side: list[str]) -> list[dict[str, Any]]:
        """One alone, then each N at once; `side` chooses the helper's socket or mktgt's image (it comes after
        the main helper's socket in `inside`'s arguments, so it is the one taken)."""
        rows = []
        for count in (1, *self.options.boots):
            row = {"users": count, **self.inside(
                *side, "boots", "mktgt" if layout == "mktgt" else "bootbroker", "--iolog", str(iolog),
                "--prefix", f"boot{count}-", "--count", str(count), "--store-disk", STORE_DISK)}
            rows.append(row)
            log(f"  {layout}, {count} at once: all done in {row['seconds_to_last']:.1f} s, store read "
                f"{row['store_bytes_read'] / 2**20:.0f} MiB, page cache +{row['page_cache_bytes'] / 2**20:.0f} MiB")
        return rows


def boot_iolog() -> Path:
    """The real OS's recorded BIOS boot (tests/lab/test_real_os.py keeps it), for the image built now."""
    from lab.realos import ensure_os_image

    iolog = cache_dir() / f"boot-io-{ensure_os_image().stem}-bios.iolog"
    if not iolog.exists():
        raise RuntimeError(f"no recorded boot at {iolog}: run the real OS's lab tests once "
                           "(pytest tests/lab/test_real_os.py) to record it")
    return iolog


def run_bench(lab: Lab, options: Options, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every step in order; the figures as one JSON-ready dict, passed to `save` after each step too."""
    bench = Bench(lab, options)
    repeat = options.repeat
    users = []
    if "logins" in options.steps:
        users += [f"bw{c}" for c in options.counts] + [f"bc{c}-{i}" for c in options.counts for i in range(repeat)]
    if "storms" in options.steps:
        users += [f"s{n}-{i}" for n in options.storms for i in range(n)]
    started = time.monotonic()
    bench.set_up(users)
    results: dict[str, Any] = {
        "date": date.today().isoformat(),
        "machine": {"host_cpu": _cpu_model(), "host_cpus": os.cpu_count(), "vm_cpus": lab.cpus,
                    "vm_memory_mb": lab.memory_mb, "emulation": "TCG", "python": platform.python_version()},
        "options": asdict(options),
    }
    if "logins" in options.steps:
        log("logins at each count of existing targets")
        results["logins"] = []
        for count in options.counts:
            bench.fill(count, count in options.mktgt_counts)
            results["logins"].append(bench.logins(count))
            save(results)
    if "storms" in options.steps:
        log("boot storms")
        results["storms"] = []
        for size in options.storms:
            results["storms"].append(bench.storm(size))
            save(results)
    if "overlays" in options.steps:
        log("overlay creation, 1 GiB and 100 GiB sparse golden images")
        results["overlays"] = bench.inside("overlays", "--reflink-dir", "/srv/xfs/overlays", "--dm-dir",
                                           "/srv/ext4/overlays", "--repeat", str(options.overlay_repeat))
        save(results)
    if "io" in options.steps:
        log("I/O through iSCSI")
        results["io"] = bench.io()
        save(results)
    if "boots" in options.steps:
        log("boot storms replaying a real boot's I/O")
        results["boots"] = bench.boots()
    problems = bench.helper.problems()
    results["consistent"] = problems == []
    if problems:
        log("the store and LIO disagree after the run:\n  " + "\n  ".join(problems))
    results["minutes"] = (time.monotonic() - started) / 60
    save(results)
    return results


def _cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()
