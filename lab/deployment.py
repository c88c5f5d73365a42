"""A bootbroker helper deployed inside the lab VM, and the real iSCSI clients that talk to its targets.

The helper runs as root in the VM against the kernel's LIO; the clients (libiscsi's tools, qemu-io) run
on the host and reach the VM's port 3260 through qemu's forwarding on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.vm import Lab, LabCommandError, LabResult, SpawnHandle

ACCOUNTS = {
    "brokersvc": ["-N", "-g", "bootbroker"],  # the broker's service account
    "deskstaff": ["-U", "-G", "bootbroker-helpdesk"],  # a helpdesk member
    "outsider": ["-U"],  # in neither group
}
GOLDEN_MIB = 16


def prepare_accounts(lab: Lab) -> None:
    for group in ("bootbroker", "bootbroker-helpdesk"):
        lab.run(["groupadd", "-f", group])
    for user, options in ACCOUNTS.items():
        if lab.run(["id", user], check=False).rc != 0:
            lab.run(["useradd", "-M", *options, user])

def clear_lio(lab: Lab) -> None:
    lab.run([str(lab.python), "-c", "from rtslib_fb import RTSRoot; RTSRoot().clear_existing(confirm=True)"])


def refused_logins(lab: Lab, initiator: str) -> list[str]:
    """LIO's kernel log lines refusing a login of `initiator` (no ACL for it), without their timestamps."""
    refusal = f"Initiator Node: {initiator} is not authorized"
    return [line.split("] ", 1)[-1] for line in lab.run(["dmesg"]).stdout.splitlines() if refusal in line]


@dataclass
class Grant:
    target_iqn: str
    lun: int
    portals: list[str]
    initiator_iqn: str
    chap_user: str
    chap_secret: str
    version: int | None = None  # the helper's answer has these; a script does not say them
    boot_files: bool | None = None


# dm-thin's pool takes its share of the store's filesystem when made: a quarter (1 GiB) leaves the rest of
# the lab disk it shares with other modules' stores to them.
POOL_OPTION = "pool_percent = 25"


class Deployment:
    """One helper in the VM with its own store, socket and configuration."""

    def __init__(self, lab: Lab, backend: str, store: str, advertise: str = "10.0.2.15:3260",
                 portal: str = "0.0.0.0:3260") -> None:
        self.lab = lab
        self.advertise = advertise  # the iSCSI portal boot scripts name
        self.portal = portal  # the one LIO listens on
        self.backend = backend
        self.store = store
        self.config = f"/etc/bootbroker/{backend}.toml"
        self.socket = f"/run/bootbroker/{backend}.sock"
        self.domain = f"{backend.replace('-', '')}.lab.example.org"
        self.process: SpawnHandle | None = None
        self.golden: dict[str, str] = {}  # image -> sha256 of its first published version
        self.store_options = ""  # more [store] lines (TOML); install() and a restart apply them
        self.more_images = ""  # more [images.NAME] sections (TOML), after the lab's own

    def config_text(self) -> str:
        return f"""
[store]
path = "{self.store}"
backend = "{self.backend}"
{POOL_OPTION if self.backend == "dm-thin" else ""}
{self.store_options}

[helper]
socket = "{self.socket}"

[iscsi]
domain = "{self.domain}"
date = "2026-11"
portals = ["{self.portal}"]
advertise = ["{self.advertise}"]

[images.demo]
description = "Demo disk"
users = ["*"]

[images.other]
description = "Second image"
users = ["*"]

[images.staff]
description = "Helpdesk tools"
groups = ["bootbroker-helpdesk"]
{self.more_images}"""

    def install(self) -> None:
        self.lab.run(["mkdir", "-p", "/etc/bootbroker", self.store])
        self.lab.run(["tee", self.config], stdin=self.config_text())

    def remove_devices(self) -> None:
        """Remove the helper's device-mapper devices (users' volumes, then thin pools) and the loop devices of
        its store's files, the helper stopped; other programs' devices (mktgt's snapshots) stay."""
        self.lab.run(["sh", "-c", f"""
for d in $(dmsetup ls | awk '$1 ~ /^bb[.]/ {{print $1}}') $(dmsetup ls | awk '$1 ~ /^bb-pool-/ {{print $1}}'); do
    dmsetup remove "$d"
done
for l in $(losetup -nO NAME,BACK-FILE | awk '$2 ~ "^{self.store}/" {{print $1}}'); do losetup -d "$l"; done
"""])

    def remove_store(self) -> None:
        """Delete the store, its immutable golden versions too (the helper stopped, its devices removed)."""
        self.lab.run(["sh", "-c", f'[ ! -d "{self.store}/images" ] || chattr -R -i "{self.store}/images"'])
        self.lab.run(["rm", "-rf", self.store])

    def start(self, env: dict[str, str] | None = None) -> None:
        self.process = self.lab.spawn(self.cli_argv("helper"), env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.cli("health", check=False).rc == 0:
                return
            status = self.lab.wait(self.process, timeout=1)
            if status.rc is not None:
                raise AssertionError(f"helper exited {status.rc}:\n{status.output}")
        raise AssertionError(f"helper did not answer within 120 s:\n{self.lab.wait(self.process, 0).output}")

    def stop(self, sig: int = signal.SIGTERM) -> str:
        assert self.process is not None
        self.lab.signal(self.process, sig)
        status = self.lab.wait(self.process, timeout=30)
        self.process = None
        return status.output

    def log(self) -> str:
        assert self.process is not None
        return self.lab.wait(self.process, timeout=0).output

    def cli_argv(self, *args: str) -> list[str]:
        return [str(self.lab.python), "-m", "broker.cli", "--config", self.config, *args]

    def cli(self, *args: str, user: str | None = None, check: bool = True, timeout: float = 120) -> LabResult:
        return self.lab.run(self.cli_argv(*args), user=user, check=check, cwd=str(self.lab.repo), timeout=timeout)

    def cli_json(self, *args: str, user: str | None = None) -> Any:
        return json.loads(self.cli(*args, "--json", user=user).stdout)

    def ensure_session(self, user: str, image: str = "demo") -> Grant:
        return Grant(**self.cli_json("start-session", user, image))

    def publish_random_golden(self, image: str) -> str:
        """Publish a golden image of random bytes; returns its sha256 in the store."""
        source = f"/tmp/golden-{image}.img"
        self.lab.run(["dd", "if=/dev/urandom", f"of={source}", "bs=1M", f"count={GOLDEN_MIB}", "status=none"])
        self.cli("images", "publish", image, source, "--no-check")  # random bytes: no disk to check
        return self.golden_sha256(image)

    def golden_sha256(self, image: str, version: int = 1) -> str:
        path = f"{self.store}/images/{image}/v{version}.img"
        return self.lab.run(["sha256sum", path]).stdout.split()[0]

    def overlay_dir(self, image: str, label: str) -> str:
        return f"{self.store}/overlays/{image}/{label}"

    def lio(self, python: str) -> str:
        """Evaluate a Python expression against configfs in the VM (read-only inspection)."""
        return self.lab.run([str(self.lab.python), "-c", python]).stdout.strip()

    def target_iqn(self, image: str, label: str) -> str:
        """The IQN the helper gives the target of `label`'s overlay of `image` (date and domain as configured)."""
        return f"iqn.2026-11.{'.'.join(reversed(self.domain.split('.')))}:{image}.{label}"

    def initiators(self, target_iqn: str) -> dict[str, bool]:
        """The initiators a target's ACLs give its disk (LUN 0 mapped), each with whether it is logged in now
        (LIO's acls/*/info)."""
        return {name: on for name, (mapped, on) in self._acls(target_iqn).items() if mapped}

    def fences(self, target_iqn: str) -> dict[str, bool]:
        """The initiators of the target's fences (NodeACLs that map no LUN: broker/helper/lio.py, fence), each with
        whether it is logged in now."""
        return {name: on for name, (mapped, on) in self._acls(target_iqn).items() if not mapped}

    def _acls(self, target_iqn: str) -> dict[str, tuple[bool, bool]]:
        """Every NodeACL of the target: initiator -> (maps LUN 0, logged in)."""
        acls = f"/sys/kernel/config/target/iscsi/{target_iqn}/tpgt_1/acls"
        listing = self.lab.run(["sh", "-c", f'for a in {acls}/*/; do echo "== $a"; [ -d "$a/lun_0" ] && echo MAPPED; '
                                            'cat "$a/info"; done']).stdout
        found: dict[str, tuple[bool, bool]] = {}
        for block in listing.split("== ")[1:]:
            path, _, info = block.partition("\n")
            if path.endswith("*/"):
                continue  # no ACL at all: the glob stayed as it was
            found[path.rstrip("/").rsplit("/", 1)[1]] = (info.startswith("MAPPED"), "TARG_SESS_STATE_LOGGED_IN" in info)
        return found

    def logged_in_to_fence(self, target_iqn: str, initiator: str, timeout: float) -> bool:
        """Wait until `initiator` is logged in to its fence on the target; False if it was not within `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.fences(target_iqn).get(initiator):
            if time.monotonic() > deadline:
                return False
            time.sleep(2)
        return True

    def problems(self) -> list[str]:
        """What does not hold between the store, the session records and the kernel (lab/invariants.py)."""
        prefix = self.target_iqn("x", "x").partition(":")[0]
        done = self.lab.run([str(self.lab.python), "-m", "lab.invariants", self.store, prefix, self.backend],
                            cwd=str(self.lab.repo))
        found: list[str] = json.loads(done.stdout)
        return found

    def snapshot(self) -> str:
        """A fingerprint of everything the helper may change: files in the store and LIO's tree."""
        files = self.lab.run(["sh", "-c", f"cd {self.store} && find . -printf '%p %s %m\\n' | sort"]).stdout
        lio = self.lab.run(["sh", "-c", "cd /sys/kernel/config/target && find iscsi core | sort"]).stdout
        return files + lio


# Real clients on the host.

def wrong_secret(secret: str) -> str:
    """A CHAP secret one character away from `secret`, never equal to it."""
    return ("Y" if secret[0] == "X" else "X") + secret[1:]


def iscsi_url(lab: Lab, grant: Grant, secret: str | None = None, user: str | None = None) -> str:
    return (
        f"iscsi://{user or grant.chap_user}%{secret or grant.chap_secret}"
        f"@127.0.0.1:{lab.iscsi_port}/{grant.target_iqn}/{grant.lun}"
    )


def iscsi_tool(lab: Lab, tool: str, grant: Grant, *, secret: str | None = None, user: str | None = None,
               initiator: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [tool, "-i", initiator or grant.initiator_iqn, iscsi_url(lab, grant, secret, user)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def reads_disk(lab: Lab, grant: Grant) -> bool:
    """Whether the grant's initiator logs in and reads its disk past the first 32 KiB. A fenced initiator
    (broker/helper/lio.py, fence) logs in too, but finds LIO's virtual LUN 0: 32 KiB that read as zeros."""
    done = qemu_io(lab, grant, f"read {FENCE_LUN_BYTES} 4096")
    return "read 4096/4096 bytes" in done.stdout


# LIO's virtual LUN 0, what an ACL that maps no LUN sees: a ramdisk of 8 pages that keeps no data
# (rd_pages=8, rd_nullio=1) and refuses writes.
FENCE_LUN_BYTES = 8 * 4096


def qemu_io_argv(lab: Lab, grant: Grant, *commands: str, cache: str = "writethrough") -> list[str]:
    """qemu-io on the grant's disk. `cache`: writethrough (qemu-io's own default) makes every write durable
    before it completes; writeback sends plain writes and flushes only when told, as an OS with a write cache
    does."""
    opts = (
        f"driver=iscsi,transport=tcp,portal=127.0.0.1:{lab.iscsi_port},target={grant.target_iqn},"
        f"lun={grant.lun},user={grant.chap_user},password-secret=chap,initiator-name={grant.initiator_iqn}"
    )
    argv = ["qemu-io", "-t", cache, "--object", f"secret,id=chap,data={grant.chap_secret}", "--image-opts", opts]
    for command in commands:
        argv += ["-c", command]
    return argv


def qemu_io(lab: Lab, grant: Grant, *commands: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(qemu_io_argv(lab, grant, *commands), capture_output=True, text=True, timeout=300,
                          check=False)


def expect_refused(result: LabResult | LabCommandError, code: str) -> None:
    assert result.rc not in (0, None), result
    assert f"{code}:" in result.stderr, result.stderr


QEMU_IO_PROMPT = b"qemu-io> "


class Workstation:
    """qemu-io kept running on one iSCSI session: a workstation that stays logged in between commands, its
    writes cached as an OS's are (plain writes; FUA and flushes when asked: `write -f`, `flushes`).
    Use as a context manager (the process is killed at the end)."""

    def __init__(self, lab: Lab, grant: Grant) -> None:
        self.grant = grant
        self.process = subprocess.Popen(
            qemu_io_argv(lab, grant, cache="writeback"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        self._fd = self.process.stdout.fileno()  # read unbuffered: a buffered line would escape select()
        # everything it printed so far, for assertion messages; first its login and first prompt
        self.output = self._read_until(lambda seen: seen.endswith(QEMU_IO_PROMPT), 120)

    def __enter__(self) -> Workstation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()

    def _read_until(self, finished: Callable[[bytes], bool], seconds: float) -> str:
        """What qemu-io prints until `finished` says so, it exits, or `seconds` pass (I/O that hangs prints
        nothing)."""
        seen = b""
        deadline = time.monotonic() + seconds
        while not finished(seen) and time.monotonic() < deadline:
            ready, _, _ = select.select([self._fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = os.read(self._fd, 65536)
            if not chunk:
                break
            seen += chunk
        return seen.decode(errors="replace")

    def _send(self, line: str) -> None:
        # One line at a time, each after the prompt that ends the last one: qemu-io reads stdin through stdio,
        # and a second line already buffered there waits unseen until more input comes.
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def command(self, line: str, seconds: float = 60) -> str:
        """Send one qemu-io command; what it printed until its statistics line or its error ("read failed:
        ..."), and the prompt after it, or until `seconds` passed."""
        self._send(line)
        text = self._read_until(
            lambda seen: (b"ops/sec" in seen or b" failed: " in seen) and seen.endswith(QEMU_IO_PROMPT), seconds)
        self.output += f"> {line}\n{text}"
        return text

    def flushes(self, seconds: float = 60) -> bool:
        """Whether a flush (SYNCHRONIZE CACHE) completed: qemu-io prints nothing for one but its next prompt
        (or its error)."""
        self._send("flush")
        text = self._read_until(lambda seen: seen.endswith(QEMU_IO_PROMPT), seconds)
        self.output += f"> flush\n{text}"
        return text.endswith(QEMU_IO_PROMPT.decode()) and "failed" not in text

    def completes(self, line: str, seconds: float = 60) -> bool:
        """Whether a read or write command completed (and a read's -P pattern matched)."""
        out = self.command(line, seconds)
        return re.search(r"(?:read|wrote) (\d+)/\1 bytes", out) is not None and "Pattern verification failed" not in out
