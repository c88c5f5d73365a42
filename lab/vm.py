"""Boot and drive the lab VM: Debian's kernel under qemu TCG, with the host's / as its root.

The host's kernel has no configfs, LIO or device-mapper, so tests that need the real kernel run
their commands in this VM through lab/agent.py. Everything listens on the host's 127.0.0.1 only.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from lab.build import Build, ensure_build, log
from lab.build import cache_dir as default_cache_dir

REPO = Path(__file__).resolve().parents[1]
GUEST_IP = "10.0.2.15"
# Where workstation VMs find the server (their qemu forwards it to the lab VM's ports). The lab VM owns this
# address too, and its iSCSI port is forwarded there, so LIO may listen on it by name: a portal that
# SendTargets discovery reports as an address the workstations reach (what dracut's netroot logs in to).
CLIENT_SIDE = "10.0.2.100"
GUEST_PORTS = {"agent": 7000, "iscsi": 3260, "broker": 8443, "http": 8080}
DISK_SIZE = 4 << 30  # each of the xfs and ext4 disks (test_faults fills the xfs one up: each GiB costs time)
# The btrfs disk holds the real OS module's store (lab/realos.py): two images, their users' overlays, backups.
BTRFS_SIZE = 6 << 30
# (device, filesystem, mkfs): made on the host, where mkfs is fast; mounted at /srv/<filesystem>.
DISKS = (
    ("vda", "btrfs", ["mkfs.btrfs", "-q", "-f"]),
    ("vdb", "xfs", ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]),
    # Initialise inode tables now, or the guest kernel would do it slowly under TCG.
    ("vdc", "ext4", ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]),
)
PR_SET_PDEATHSIG = 1


class LabError(Exception):
    """The lab VM did not boot, or its agent could not do what was asked."""


@dataclass(frozen=True)
class LabResult:
    rc: int | None  # None when the command ran out of time and was killed
    stdout: str
    stderr: str
    timed_out: bool = False


class LabCommandError(LabError):
    def __init__(self, argv: list[str], result: LabResult) -> None:
        why = "timed out" if result.timed_out else f"exited {result.rc}"
        super().__init__(f"{argv} {why}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        self.rc = result.rc
        self.stdout = result.stdout
        self.stderr = result.stderr


@dataclass(frozen=True)
class SpawnHandle:
    id: int
    argv: tuple[str, ...]


@dataclass(frozen=True)
class SpawnStatus:
    rc: int | None  # None while the process is still running
    output: str  # stdout and stderr so far


class Lab:
    """One lab VM. Use as a context manager, so qemu never outlives its user."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        work_dir: Path | None = None,
        memory_mb: int = 2048,
        cpus: int = 2,
        boot_timeout: float = 300.0,
        disk_size: int = DISK_SIZE,
    ) -> None:
        self.cache_dir = cache_dir or default_cache_dir()
        self._work_dir = work_dir
        self._own_work_dir = work_dir is None
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.disk_size = disk_size  # each of the xfs and ext4 disks, btrfs at least BTRFS_SIZE (sparse files here)
        self.boot_seconds: float | None = None
        self._qemu: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}
        self._token = ""
        self.build: Build | None = None  # what the VM booted from, once started

    @property
    def repo(self) -> Path:
        """The repo root; the VM sees the host's files at the same paths."""
        return REPO

    @property
    def python(self) -> Path:
        """The venv's Python, which runs both here and in the VM."""
        return REPO / ".venv" / "bin" / "python"

    @property
    def iscsi_port(self) -> int:
        return self._ports["iscsi"]

    @property
    def broker_port(self) -> int:
        return self._ports["broker"]

    @property
    def http_port(self) -> int:
        return self._ports["http"]

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            raise LabError("the lab has not been started")
        return self._work_dir

    @property
    def console_log(self) -> Path:
        return self.work_dir / "console.log"

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Build if needed, make fresh disks, boot, and wait until the agent answers."""
        if self._qemu is not None:
            raise LabError("the lab is already running")
        build = self.build = ensure_build(self.cache_dir)
        self._check_paths(build)
        if self._work_dir is None:
            # Next to the cache: the host's /tmp may be a small tmpfs, and the disks grow.
            runs = self.cache_dir / "runs"
            runs.mkdir(exist_ok=True)
            _remove_stale_runs(runs)
            self._work_dir = Path(tempfile.mkdtemp(prefix=f"lab-{os.getpid()}-", dir=runs))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._boot(build)
        except BaseException:
            self.stop()
            raise

    def _check_paths(self, build: Build) -> None:
        if not self.python.exists():
            raise LabError(f"{self.python} is missing: run scripts/lab setup")
        # The kernel command line splits on spaces.
        for path in (REPO, build.modules):
            if " " in str(path):
                raise LabError(f"the lab cannot use a path with spaces: {path}")

    def _boot(self, build: Build) -> None:
        self._token = secrets.token_hex(16)
        token_file = self.work_dir / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self._token)
        self._make_disks()
        self._ports = {name: _free_port() for name in GUEST_PORTS}
        self._power_on(build)

    def _power_on(self, build: Build) -> None:
        began = time.monotonic()
        log(f"booting {build.version} under TCG ({self.cpus} cpus, {self.memory_mb} MiB)")
        with (self.work_dir / "qemu.log").open("wb") as qemu_log:
            self._qemu = subprocess.Popen(
                self._qemu_argv(build, self.work_dir / "token"), stdin=subprocess.DEVNULL,
                stdout=qemu_log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        self._wait_for_agent(began)
        self.boot_seconds = time.monotonic() - began
        log(f"lab ready in {self.boot_seconds:.1f} s (console: {self.console_log})")

    def power_cut(self) -> None:
        """Cut the VM's power (qemu is killed) and boot it again. What reached its disks stays (the stores,
        the helper's session records); everything else starts afresh, as after a real power cut: LIO,
        device-mapper, loop devices and the tmpfs root (accounts, /etc/bootbroker, /run, processes). The
        forwarded ports stay the same, so clients reconnect to the same address."""
        if self._qemu is None or self.build is None:
            raise LabError("the lab is not running")
        self._qemu.kill()
        self._qemu.wait()
        self._qemu = None
        log("power cut: the lab VM is off; booting it again with the same disks")
        self._power_on(self.build)

    def _make_disks(self) -> None:
        log("formatting fresh btrfs, xfs and ext4 disks")
        for _, fs, mkfs in DISKS:
            image = self._disk(fs)
            image.unlink(missing_ok=True)
            with image.open("wb") as disk:
                disk.truncate(max(self.disk_size, BTRFS_SIZE) if fs == "btrfs" else self.disk_size)
            subprocess.run([*mkfs, str(image)], check=True, capture_output=True)

    def _disk(self, fs: str) -> Path:
        return self.work_dir / f"{fs}.img"

    def _qemu_argv(self, build: Build, token_file: Path) -> list[str]:
        forwards = ",".join(
            f"hostfwd=tcp:127.0.0.1:{self._ports[name]}-{CLIENT_SIDE if name == 'iscsi' else GUEST_IP}:{port}"
            for name, port in GUEST_PORTS.items()
        )
        disks = ",".join(f"{device}:{fs}" for device, fs, _ in DISKS)
        cmdline = (
            f"console=ttyS0 panic=-1 lab.python={self.python} lab.repo={REPO} "
            f"lab.port={GUEST_PORTS['agent']} lab.token={token_file} "
            f"lab.modules={build.modules} lab.disks={disks} lab.alias={CLIENT_SIDE}"
        )
        argv = [
            # No AVX: glibc would pick AVX2 string functions, which TCG emulates slowly
            # (Python starts 2x faster without).
            "qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-cpu", "max,-avx,-avx2",
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", f"file:{self.console_log}",
            "-kernel", str(build.kernel), "-initrd", str(build.initrd), "-append", cmdline,
            "-netdev", f"user,id=n0,restrict=on,{forwards}",
            # romfile=: no PXE option ROM, we boot the kernel directly.
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            # multidevs=remap: the host's / spans several filesystems; keep inode numbers unique.
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]
        for _, fs, _ in DISKS:
            # cache=unsafe: the disks are thrown away after each lab. Writes still reach the host's file
            # as the guest makes them (qemu keeps no cache of its own for raw images), so what the
            # guest's kernel wrote survives power_cut(); what only its page cache held does not.
            argv += ["-drive", f"file={self._disk(fs)},format=raw,if=virtio,cache=unsafe"]
        return argv

    def _wait_for_agent(self, began: float) -> None:
        deadline = began + self.boot_timeout
        next_report = began + 10
        while True:
            self._check_qemu_alive()
            try:
                self._call("ping", wait=5)
                return
            except OSError:
                pass  # not listening yet: qemu accepts for the guest, then drops the connection
            now = time.monotonic()
            if now > deadline:
                raise LabError(
                    f"the lab agent did not answer in {self.boot_timeout:.0f} s\n"
                    f"console.log:\n{self._tail()}"
                )
            if now > next_report:
                log(f"still booting ({now - began:.0f} s): {self._tail(1).strip()[:100]}")
                next_report = now + 10
            time.sleep(0.5)

    def _check_qemu_alive(self) -> None:
        if self._qemu is not None and self._qemu.poll() is not None:
            qemu_log = (self.work_dir / "qemu.log").read_text(errors="replace")
            raise LabError(
                f"qemu exited with {self._qemu.returncode}\n{qemu_log}\n"
                f"console.log:\n{self._tail()}"
            )

    def _tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console output yet)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Power off (qemu is killed: the VM holds nothing worth a clean shutdown); idempotent."""
        if self._qemu is not None:
            self._qemu.terminate()
            try:
                self._qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._qemu.kill()
                self._qemu.wait()
            self._qemu = None
        if self._work_dir is not None:
            for _, fs, _ in DISKS:
                self._disk(fs).unlink(missing_ok=True)
            if self._own_work_dir:
                shutil.rmtree(self._work_dir, ignore_errors=True)
                self._work_dir = None

    def _call(self, op: str, wait: float, **fields: Any) -> dict[str, Any]:
        """One request to the agent on a fresh connection (so threads may share a Lab)."""
        if self._qemu is None:
            raise LabError("the lab is not running")
        request = json.dumps({"op": op, "token": self._token, **fields}).encode() + b"\n"
        with socket.create_connection(("127.0.0.1", self._ports["agent"]), timeout=wait) as conn:
            conn.sendall(request)
            line = conn.makefile("rb").readline()
        if not line:
            raise ConnectionError("the lab agent closed the connection")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise LabError(f"lab agent: {op}: {reply['error']}")
        return reply

    def run(
        self,
        argv: list[str],
        *,
        stdin: str | None = None,
        timeout: float = 120,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
    ) -> LabResult:
        """Run argv in the VM as root (or as user) and wait for it; check raises on failure."""
        reply = self._call(
            "run", wait=timeout + 30, argv=argv, stdin=stdin, timeout=timeout,
            user=user, env=env, cwd=cwd,
        )
        result = LabResult(reply["rc"], reply["stdout"], reply["stderr"], reply["timeout"])
        if check and result.rc != 0:
            raise LabCommandError(argv, result)
        return result

    def spawn(
        self,
        argv: list[str],
        *,
        stdin: str | None = None,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> SpawnHandle:
        """Start argv in the background in the VM; its output goes to /tmp/lab-spawn-ID.log."""
        reply = self._call("spawn", wait=30, argv=argv, stdin=stdin, user=user, env=env, cwd=cwd)
        return SpawnHandle(reply["id"], tuple(argv))

    def signal(self, handle: SpawnHandle, sig: int) -> None:
        self._call("signal", wait=30, id=handle.id, signal=int(sig))

    def wait(self, handle: SpawnHandle, timeout: float = 60) -> SpawnStatus:
        """Wait up to timeout for a spawned process; rc is None if it still runs."""
        reply = self._call("wait", wait=timeout + 30, id=handle.id, timeout=timeout)
        return SpawnStatus(reply["rc"], reply["output"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _remove_stale_runs(runs: Path) -> None:
    """Work dirs of labs whose process was killed before stop(): their disks would pile up."""
    for run in runs.glob("lab-*-*"):
        pid = run.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log(f"removing stale {run}")
            shutil.rmtree(run, ignore_errors=True)


def _die_with_parent() -> None:
    """In the qemu child: get SIGKILL if our process dies without calling stop()."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
