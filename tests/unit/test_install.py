"""scripts/install into a staging directory; the systemd units (systemd-analyze, and the broker run under
an equivalent of its unit's seccomp policy); the PAM service file parsed by libpam itself."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main

REPO = Path(__file__).parents[2]
UNITS = REPO / "scripts" / "systemd"
BROKER_UNIT = UNITS / "bootbroker.service"
HELPER_UNIT = UNITS / "bootbroker-helper.service"
PAM_FILE = REPO / "scripts" / "pam.d" / "bootbroker"
PAM_DIRS = [Path("/lib/x86_64-linux-gnu/security"), Path("/usr/lib/x86_64-linux-gnu/security")]
# What scripts/install never copies (its SKIP list).
NOT_INSTALLED = (".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache", "build", "dist")
# Where a prefixed install must not write.
SYSTEM_PATHS = [Path(p) for p in (
    "/etc/pam.d/bootbroker", "/etc/systemd/system/bootbroker.service",
    "/etc/systemd/system/bootbroker-helper.service", "/etc/bootbroker", "/opt/bootbroker", "/var/lib/bootbroker",
    "/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow",
)]


# --- scripts/install ---------------------------------------------------------------------------------

@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A snapshot of the repository: other people edit the live tree while the tests run."""
    copy = tmp_path / "checkout"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(*NOT_INSTALLED), symlinks=True)
    return copy


def install(checkout: Path, prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(checkout / "scripts" / "install"), "--prefix", str(prefix), *extra],
                          capture_output=True, text=True, check=False, timeout=600)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def system_state() -> dict[str, object]:
    paths = {str(p): (p.stat().st_mtime_ns if p.exists() else None) for p in SYSTEM_PATHS}
    accounts = {
        name: subprocess.run(["getent", kind, name], capture_output=True, text=True, check=False).stdout
        for kind, name in (("passwd", "bootbroker"), ("group", "bootbroker"), ("group", "bootbroker-helpdesk"))
    }
    return {"paths": paths, "accounts": accounts}


def tree(root: Path) -> dict[Path, tuple[int, int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_mode, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_a_staged_install_lays_out_the_tree_and_touches_nothing_outside(checkout: Path, tmp_path: Path) -> None:
    before = system_state()
    root = tmp_path / "root"
    done = install(checkout, root, "--no-venv")
    assert done.returncode == 0, done.stdout + done.stderr
    assert system_state() == before
    assert "staged" in done.stdout and "Next steps" in done.stdout and "Done:" in done.stdout
    assert mode(root / "etc/bootbroker") == 0o750
    config = root / "etc/bootbroker/bootbroker.toml"
    assert mode(config) == 0o640 and config.read_text() == (REPO / "examples/site.toml").read_text()
    assert mode(root / "var/lib/bootbroker") == 0o750
    assert mode(root / "var/lib/bootbroker/tls") == 0o700
    assert (root / "etc/pam.d/bootbroker").read_text() == PAM_FILE.read_text()
    assert mode(root / "etc/pam.d/bootbroker") == 0o644
    for unit in (BROKER_UNIT, HELPER_UNIT):
        assert (root / "etc/systemd/system" / unit.name).read_text() == unit.read_text()
    code = root / "opt/bootbroker"
    assert {p.name for p in (code / "templates").iterdir()} >= {"entry.ipxe.j2", "menu.ipxe.j2", "sanboot.ipxe.j2"}
    assert (code / "pyproject.toml").is_file() and (code / "broker" / "cli.py").is_file()
    assert not (code / ".venv").exists() and not (code / ".git").exists()
    assert not list(code.rglob("__pycache__"))


def test_the_config_template_passes_check_config(checkout: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert install(checkout, tmp_path / "root", "--no-venv").returncode == 0
    assert main(["--config", str(tmp_path / "root/etc/bootbroker/bootbroker.toml"), "check-config"]) == 0
    assert "PAM service 'bootbroker'" in capsys.readouterr().out


def test_a_second_run_changes_nothing_says_so_and_keeps_the_admins_files(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert install(checkout, root, "--no-venv").returncode == 0
    (root / "etc/bootbroker/bootbroker.toml").write_text("# the admin's own\n")
    (root / "etc/pam.d/bootbroker").write_text("auth required pam_sss.so\n")
    snapshot = tree(root)
    again = install(checkout, root, "--no-venv")
    assert again.returncode == 0, again.stderr
    assert "Nothing to do: everything was already in place." in again.stdout
    assert not re.search(r"^   (created|installed|copied|mode|owner)", again.stdout, re.M), again.stdout
    assert tree(root) == snapshot


def test_a_changed_checkout_is_copied_again_and_a_wrong_mode_repaired(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert install(checkout, root, "--no-venv").returncode == 0
    (checkout / "templates" / "menu.ipxe.j2").write_text("#!ipxe\n# changed\n")
    (root / "var/lib/bootbroker/tls").chmod(0o755)
    (root / "etc/systemd/system/bootbroker.service").write_text("[Service]\n")
    again = install(checkout, root, "--no-venv")
    assert again.returncode == 0, again.stderr
    assert "copied this checkout" in again.stdout and "mode of /var/lib/bootbroker/tls set to 0700" in again.stdout
    assert "installed /etc/systemd/system/bootbroker.service" in again.stdout and "Done: 3 change(s)." in again.stdout
    assert (root / "opt/bootbroker/templates/menu.ipxe.j2").read_text() == "#!ipxe\n# changed\n"
    assert mode(root / "var/lib/bootbroker/tls") == 0o700
    assert (root / "etc/systemd/system/bootbroker.service").read_text() == BROKER_UNIT.read_text()


def test_the_code_belongs_to_root_whoever_owns_the_checkout(checkout: Path, tmp_path: Path) -> None:
    # The helper runs this code as root: a user who owns the checkout must not own (or be able to write)
    # the installed copy.
    for path in [checkout, *checkout.rglob("*")]:
        os.chown(path, 65534, 65534, follow_symlinks=False)
    (checkout / "broker" / "cli.py").chmod(0o666)
    (checkout / "templates").chmod(0o777)
    root = tmp_path / "root"
    assert install(checkout, root, "--no-venv").returncode == 0
    code = root / "opt/bootbroker"
    for path in [code, *code.rglob("*")]:
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (0, 0), path
        assert stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o022, f"{path} is writable by others"


def test_a_full_install_makes_a_venv_that_runs_from_the_copy(checkout: Path, tmp_path: Path) -> None:
    """The slow one (pip): the venv comes from the system's python, the installed package finds its
    templates in /opt/bootbroker, the entry point works, and a second run does not reinstall."""
    root = tmp_path / "root"
    done = install(checkout, root)
    assert done.returncode == 0, done.stdout + done.stderr
    venv = root / "opt/bootbroker/.venv"
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text()  # not pyenv under /root: ProtectHome
    located = subprocess.run(
        [str(venv / "bin/python"), "-c", "from broker.web import scripts; print(scripts.BUNDLED_TEMPLATES)"],
        cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert located == str(root / "opt/bootbroker/templates")
    checked = subprocess.run([str(venv / "bin/bootbroker"), "--config", str(root / "etc/bootbroker/bootbroker.toml"),
                              "check-config"], cwd="/", capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    snapshot = tree(root)
    again = install(checkout, root)
    assert again.returncode == 0, again.stderr
    assert "Nothing to do" in again.stdout, again.stdout
    assert tree(root) == snapshot


def test_help_and_bad_arguments(tmp_path: Path) -> None:
    helped = subprocess.run([str(REPO / "scripts/install"), "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "--prefix DIR" in helped.stdout and "--no-venv" in helped.stdout
    for argv, message in ((["--bogus"], "unknown argument --bogus"), (["--prefix"], "--prefix needs a directory"),
                          (["--prefix", str(REPO / "stage")], "inside the checkout")):
        bad = subprocess.run([str(REPO / "scripts/install"), *argv], capture_output=True, text=True, check=False)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    assert not (REPO / "stage").exists()


# --- the systemd units ---------------------------------------------------------------------------------

def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: sections of keys, each key with all its assignments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert not line.endswith("\\"), "no continuation lines here, the parser above does not join them"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify(units: list[Path], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify, with ExecStart pointed at a binary that exists on this machine."""
    copies = []
    for path in units:
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("/opt/bootbroker/.venv/bin/bootbroker", "/bin/true"))
        copies.append(str(copy))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *copies],
                          capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_accepts_every_key_of_the_units(tmp_path: Path) -> None:
    done = verify([BROKER_UNIT, HELPER_UNIT], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    typo = tmp_path / "typo" / "typo.service"
    typo.parent.mkdir()
    typo.write_text("[Service]\nExecStart=/bin/true\nProtectSystm=yes\n")
    assert "Unknown key" in verify([typo], tmp_path / "typo").stderr  # the check above can fail


def test_the_broker_unit_runs_unprivileged_with_one_capability() -> None:
    service = unit(BROKER_UNIT)["Service"]
    want = {
        "User": ["bootbroker"], "Group": ["bootbroker"],
        "ExecStart": ["/opt/bootbroker/.venv/bin/bootbroker serve"],
        "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"], "CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
        "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"], "StateDirectory": ["bootbroker"],
        "PrivateDevices": ["yes"], "ProtectHome": ["yes"], "PrivateTmp": ["yes"],
        "MemoryDenyWriteExecute": ["yes"], "SystemCallFilter": ["@system-service"], "Restart": ["on-failure"],
    }
    assert {key: service.get(key) for key in want} == want
    assert "SupplementaryGroups" not in service  # a site's choice: commented, with the reason
    assert "#SupplementaryGroups=shadow" in BROKER_UNIT.read_text()
    # The broker outlives the helper (it answers "not available"): ordered after it, never bound to it.
    units = unit(BROKER_UNIT)["Unit"]
    assert "bootbroker-helper.service" in " ".join(units["Wants"] + units["After"]).split()
    assert not {"Requires", "BindsTo", "PartOf", "Requisite"} & units.keys()


def test_the_helper_unit_keeps_the_devices_and_the_socket_directory() -> None:
    service = unit(HELPER_UNIT)["Service"]
    assert "User" not in service and "DynamicUser" not in service
    assert service["ExecStart"] == ["/opt/bootbroker/.venv/bin/bootbroker helper"]
    # Each of these would close /dev/loop*, /dev/mapper or configfs writes (see the unit's comments).
    assert not {"PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectSystem"} & service.keys()
    (pre,) = service["ExecStartPre"]
    assert pre.startswith("-") and {"target_core_mod", "iscsi_target_mod", "target_core_file",
                                     "target_core_iblock", "dm_snapshot", "loop"} <= set(pre.split())
    assert (service["RuntimeDirectory"], service["RuntimeDirectoryMode"], service["RuntimeDirectoryPreserve"]) \
        == (["bootbroker"], ["0755"], ["yes"])
    socket_line = re.search(r'^socket = "(.*)"', (REPO / "examples/site.toml").read_text(), re.M)
    assert socket_line and Path(socket_line[1]).parent == Path("/run/bootbroker")
    assert "network-online.target" in unit(HELPER_UNIT)["Unit"]["After"][0].split()


# --- the broker under its unit's system call rules ----------------------------------------------------
# systemd 252 (Debian 12) turns SystemCallArchitectures=native, MemoryDenyWriteExecute=yes,
# RestrictAddressFamilies= and SystemCallFilter= into one seccomp filter. Without a running systemd here,
# the tests build the same rules as a classic BPF program (from the unit's own settings, with
# systemd-analyze expanding the @groups) and start the broker under it.

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
LD_ABS, JEQ, JGE, JSET, AND, RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
KILL_PROCESS, ALLOW = 0x80000000, 0x7FFF0000
AUDIT_ARCH_X86_64, X32_SYSCALL_BIT = 0xC000003E, 0x40000000
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000

LAUNCH = """
import ctypes, os, sys
program = open(sys.argv[1], "rb").read()
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
libc = ctypes.CDLL(None, use_errno=True)
fprog = Fprog(len(program) // 8, program)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):  # NO_NEW_PRIVS, SECCOMP filter
    sys.exit(f"seccomp: {os.strerror(ctypes.get_errno())}")
os.execv(sys.argv[2], sys.argv[2:])
"""


def syscall_group(name: str) -> set[str]:
    listing = subprocess.run(["systemd-analyze", "syscall-filter", name],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    names: set[str] = set()
    for line in listing[1:]:
        entry = line.strip()
        if entry.startswith("@"):
            names |= syscall_group(entry)
        elif entry and not entry.startswith("#"):
            names.add(entry)
    return names


def seccomp_program(service: dict[str, list[str]]) -> bytes:
    """The unit's system call rules as systemd 252 applies them: other ABIs and unlisted calls kill the
    process (SIGSYS); W+X mappings fail with EPERM; sockets of other families with EAFNOSUPPORT."""
    numbers = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", UNISTD.read_text())}

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
        return code, jt, jf, k

    def arg(i: int) -> int:  # low 32 bits of seccomp_data.args[i]
        return 16 + 8 * i

    assert service["SystemCallArchitectures"] == ["native"]
    program = [op(LD_ABS, 4), op(JEQ, AUDIT_ARCH_X86_64, 1, 0), op(RET, KILL_PROCESS),
               op(LD_ABS, 0), op(JGE, X32_SYSCALL_BIT, 0, 1), op(RET, KILL_PROCESS)]
    eperm = 0x00050000 | errno.EPERM
    if service.get("MemoryDenyWriteExecute") == ["yes"]:
        program += [op(LD_ABS, 0), op(JEQ, numbers["mmap"], 0, 4), op(LD_ABS, arg(2)),
                    op(AND, PROT_WRITE | PROT_EXEC), op(JEQ, PROT_WRITE | PROT_EXEC, 0, 1), op(RET, eperm)]
        for name, bit in (("mprotect", PROT_EXEC), ("pkey_mprotect", PROT_EXEC), ("shmat", SHM_EXEC)):
            program += [op(LD_ABS, 0), op(JEQ, numbers[name], 0, 3), op(LD_ABS, arg(2)),
                        op(JSET, bit, 0, 1), op(RET, eperm)]
    if "RestrictAddressFamilies" in service:
        families = [int(getattr(socket, name)) for name in " ".join(service["RestrictAddressFamilies"]).split()]
        n = len(families)
        program += [op(LD_ABS, 0), op(JEQ, numbers["socket"], 0, n + 2), op(LD_ABS, arg(0))]
        program += [op(JEQ, family, n - i, 0) for i, family in enumerate(families)]
        program += [op(RET, 0x00050000 | errno.EAFNOSUPPORT)]
    allowed: set[str] = set()
    for entry in " ".join(service["SystemCallFilter"]).split():
        allowed |= syscall_group(entry) if entry.startswith("@") else {entry}
    program.append(op(LD_ABS, 0))
    for number in sorted(numbers[name] for name in allowed if name in numbers):
        program += [op(JEQ, number, 0, 1), op(RET, ALLOW)]
    program.append(op(RET, KILL_PROCESS))
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in program)


@pytest.fixture
def sandboxed(tmp_path: Path) -> list[str]:
    """argv prefix that runs a program under the broker unit's system call rules."""
    if platform.machine() != "x86_64" or not UNISTD.is_file() or shutil.which("systemd-analyze") is None:
        pytest.skip("needs x86_64 system call numbers (linux-libc-dev) and systemd-analyze")
    program = tmp_path / "filter.bpf"
    program.write_bytes(seccomp_program(unit(BROKER_UNIT)["Service"]))
    launcher = [sys.executable, "-c", LAUNCH, str(program)]
    trial = subprocess.run([*launcher, "/bin/true"], capture_output=True, text=True, check=False)
    if trial.returncode != 0:
        pytest.skip(f"cannot install a seccomp filter here: {trial.stderr.strip()}")
    return launcher


PROBE = """
import ctypes, socket, sys
import pam
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
wx = libc.mmap(None, 4096, 7, 0x22, -1, 0)  # PROT_READ|WRITE|EXEC, MAP_PRIVATE|ANONYMOUS
print("wx-mmap", "refused" if wx in (None, 2**64 - 1) else "allowed", ctypes.get_errno())
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    print("netlink allowed")
except OSError as e:
    print("netlink refused", e.errno)
compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
numbers = (ctypes.c_int * 4)(3, 1, 4, 2)
libc.qsort(numbers, 4, ctypes.sizeof(ctypes.c_int), compare(lambda a, b: a[0] - b[0]))
print("callback", list(numbers))
handle = pam.pam()
handle.authenticate("bootbroker-no-such-user", "wrong", service="bootbroker-sandbox-test")
print("pam", handle.reason)
sys.stdout.flush()
libc.syscall(168, b"/nonexistent")  # swapoff: not in @system-service
print("swapoff survived")
"""


def test_the_emulated_rules_bite(sandboxed: list[str]) -> None:
    """The filter the next test relies on enforces what the unit says (so that test can fail), and
    ctypes callbacks and PAM conversations work under MemoryDenyWriteExecute."""
    done = subprocess.run([*sandboxed, sys.executable, "-c", PROBE], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == -signal.SIGSYS, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"wx-mmap refused {errno.EPERM}", f"netlink refused {errno.EAFNOSUPPORT}", "callback [1, 2, 3, 4]",
        "pam Authentication failure",  # the conversation ran: pam_unix asked for the password
    ]


BROKER_CONFIG = """
[store]
path = "/srv/bootbroker"
[helper]
socket = "{tmp}/helper.sock"
[iscsi]
domain = "lab.example.org"
date = "2026-11"
portals = ["192.0.2.10:3260"]
[broker]
url = "https://127.0.0.1:{port}"
listen = ["127.0.0.1:{port}"]
certificate = "{tmp}/tls/broker.crt"
key = "{tmp}/tls/broker.key"
pam_service = "bootbroker-sandbox-test"
[broker.limits]
failure_delay = 0.1
[images.demo]
description = "Demo disk"
users = ["*"]
"""


def test_the_broker_works_under_its_units_system_call_rules(sandboxed: list[str], tmp_path: Path) -> None:
    """Certificate generation, TLS, PAM (ctypes callbacks), the helper's socket and a clean stop, all
    under MemoryDenyWriteExecute, @system-service and AF_UNIX/AF_INET/AF_INET6 only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "bootbroker.toml"
    config.write_text(BROKER_CONFIG.format(tmp=tmp_path, port=port))
    broker = subprocess.Popen([*sandboxed, sys.executable, "-m", "broker.cli", "--config", str(config), "serve"],
                              cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert broker.stderr is not None
    log = []
    try:
        for line in broker.stderr:
            log.append(line)
            if "broker ready" in line:
                break
        assert broker.poll() is None, "".join(log)
        context = ssl.create_default_context(cafile=str(tmp_path / "tls/broker.crt"))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/boot.ipxe", context=context, timeout=30) as answer:
            assert answer.read().startswith(b"#!ipxe")
        credentials = b64encode(b"bootbroker-no-such-user:wrong").decode()
        login = urllib.request.Request(f"https://127.0.0.1:{port}/login.ipxe",
                                       headers={"Authorization": f"Basic {credentials}"})
        for request, status in ((login, 401), (f"https://127.0.0.1:{port}/health", 503)):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, context=context, timeout=30)
            assert refused.value.code == status
    finally:
        broker.send_signal(signal.SIGTERM)
        rest = broker.communicate(timeout=30)[1]
    assert broker.returncode == 0, "".join(log) + rest  # -SIGSYS: a system call outside the filter


# --- the PAM service file ------------------------------------------------------------------------------

def pam_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_pam_file_names_real_modules_and_never_nullok() -> None:
    lines = pam_lines(PAM_FILE.read_text())
    assert [line[0] for line in lines] == ["auth", "account"]
    for kind, control, module, *args in lines:
        assert control in ("required", "requisite", "sufficient") or re.fullmatch(r"\[.*\]", control)
        assert any((d / module).is_file() for d in PAM_DIRS), f"{module} is not installed"
        assert "nullok" not in args
    # The commented alternatives are whole lines too, ready to uncomment.
    alternatives = [line.lstrip("# ").split() for line in PAM_FILE.read_text().splitlines()
                    if re.match(r"#\s+(auth|account)\s", line)]
    assert {line[2] for line in alternatives} == {"pam_sss.so", "pam_krb5.so"}
    assert all(line[1] == "required" and "nullok" not in line for line in alternatives)


PAM_AUTH_ERR, PAM_USER_UNKNOWN = 7, 10


class PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class PamResponse(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


PamConvFunc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(PamMessage)),
                               ctypes.POINTER(ctypes.POINTER(PamResponse)), ctypes.c_void_p)


class PamConv(ctypes.Structure):
    _fields_ = [("conv", PamConvFunc), ("appdata_ptr", ctypes.c_void_p)]


PAM_FAIL_DELAY = 10  # pam_set_item's item type (security/_pam_types.h)
PamDelayFunc = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


def run_pam(confdir: Path) -> tuple[int, list[str], list[int]]:
    """libpam reads confdir/bootbroker (pam_start_confdir, Linux-PAM 1.4+) and authenticates an unknown
    user; returns pam_authenticate's code, the prompts the stack asked, and the failure delays (in
    microseconds) its modules asked for: with PAM_FAIL_DELAY set to a function of ours, libpam reports
    the delay to it instead of sleeping, so no test waits for it."""
    libpam = ctypes.CDLL("libpam.so.0")
    libc = ctypes.CDLL(None)
    libc.calloc.restype = ctypes.c_void_p
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.strdup.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]
    prompts: list[str] = []
    delays: list[int] = []

    def converse(count: int, messages: Any, responses: Any, _data: int) -> int:
        answers = ctypes.cast(libc.calloc(count, ctypes.sizeof(PamResponse)), ctypes.POINTER(PamResponse))
        for i in range(count):
            prompts.append((messages[i].contents.msg or b"").decode())
            answers[i].resp = libc.strdup(b"not-the-password")
        responses[0] = answers
        return 0

    conversation = PamConv(PamConvFunc(converse), None)
    delay = PamDelayFunc(lambda _status, usec, _data: delays.append(usec))
    handle = ctypes.c_void_p()
    started = libpam.pam_start_confdir(b"bootbroker", b"bootbroker-no-such-user", ctypes.byref(conversation),
                                       str(confdir).encode(), ctypes.byref(handle))
    assert started == 0
    libpam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    assert libpam.pam_set_item(handle, PAM_FAIL_DELAY, ctypes.cast(delay, ctypes.c_void_p)) == 0
    code = libpam.pam_authenticate(handle, 0)
    libpam.pam_end(handle, code)
    return code, prompts, delays


def test_libpam_reads_the_service_file_and_asks_pam_unix(tmp_path: Path) -> None:
    confdir = tmp_path / "pam.d"
    confdir.mkdir()
    shutil.copy(PAM_FILE, confdir / "bootbroker")
    code, prompts, _ = run_pam(confdir)
    assert code in (PAM_AUTH_ERR, PAM_USER_UNKNOWN) and prompts == ["Password: "]
    # The same check on a file libpam cannot use: no prompt, another answer.
    (confdir / "bootbroker").write_text(PAM_FILE.read_text().replace("auth     required  pam_unix.so",
                                                                     "auth     required  pam_unixx.so"))
    broken, asked, _ = run_pam(confdir)
    assert broken not in (0, PAM_AUTH_ERR, PAM_USER_UNKNOWN) and asked == []


def test_pam_unix_is_asked_for_no_failure_delay(tmp_path: Path) -> None:
    """`nodelay`: libpam would otherwise sleep 2 s in the broker's PAM thread after each wrong password, and
    `pam_concurrency` wrong guesses a second would hold every PAM thread; the broker tarpits failures itself
    (`failure_delay`), in the event loop, holding no thread."""
    confdir = tmp_path / "pam.d"
    confdir.mkdir()
    shutil.copy(PAM_FILE, confdir / "bootbroker")
    code, _, delays = run_pam(confdir)
    assert code != 0 and delays == [0]
    # The same stack without `nodelay` asks for pam_unix's 2 s (libpam varies it randomly around that):
    # the test can see a delay when there is one.
    (confdir / "bootbroker").write_text("auth required pam_unix.so\naccount required pam_unix.so\n")
    code, _, delays = run_pam(confdir)
    assert code != 0 and len(delays) == 1 and 1_000_000 <= delays[0] <= 3_000_000
