"""scripts/install into a staging directory, the systemd units (systemd-analyze) and the PAM service file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
INSTALL = REPO / "scripts" / "install"
UNITS = sorted((REPO / "scripts" / "systemd").glob("*.service"))
PAM_DIRS = [Path("/lib/x86_64-linux-gnu/security"), Path("/usr/lib/x86_64-linux-gnu/security")]


def install(prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INSTALL), "--prefix", str(prefix), "--no-venv"], capture_output=True, text=True,
                          check=False, timeout=300)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_staged_install_lays_out_the_tree(tmp_path: Path) -> None:
    system_paths = [Path("/etc/pam.d/bootbroker"), Path("/etc/systemd/system/bootbroker.service"), Path("/opt/bootbroker")]
    before = {p: p.exists() for p in system_paths}
    done = install(tmp_path)
    assert done.returncode == 0, done.stderr
    assert {p: p.exists() for p in system_paths} == before  # nothing outside the prefix
    assert mode(tmp_path / "etc/bootbroker") == 0o750
    assert mode(tmp_path / "etc/bootbroker/bootbroker.toml") == 0o640
    assert mode(tmp_path / "var/lib/bootbroker/tls") == 0o700
    assert (tmp_path / "etc/pam.d/bootbroker").read_text() == (REPO / "scripts/pam.d/bootbroker").read_text()
    for unit in UNITS:
        assert (tmp_path / "etc/systemd/system" / unit.name).read_text() == unit.read_text()
    assert (tmp_path / "opt/bootbroker/templates/sanboot.ipxe.j2").is_file()
    assert not (tmp_path / "opt/bootbroker/.git").exists()
    assert "Next steps" in done.stdout


def test_a_second_run_changes_nothing_and_keeps_the_admins_files(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    config = tmp_path / "etc/bootbroker/bootbroker.toml"
    config.write_text("# the admin's own\n")
    snapshot = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    again = install(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "copied" not in again.stdout and "installed" not in again.stdout and "created" not in again.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()} == snapshot


def test_help_and_bad_arguments() -> None:
    helped = subprocess.run([str(INSTALL), "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "--prefix" in helped.stdout and "--no-venv" in helped.stdout
    bad = subprocess.run([str(INSTALL), "--bogus"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stderr


def verify(units: list[Path], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify, with ExecStart pointed at a binary that exists on this machine."""
    copies = []
    for unit in units:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/bootbroker/.venv/bin/bootbroker", "/bin/true"))
        copies.append(str(copy))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *copies], capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_accepts_every_key_of_the_units(tmp_path: Path) -> None:
    done = verify(UNITS, tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    typo = tmp_path / "typo" / "typo.service"
    typo.parent.mkdir()
    typo.write_text("[Service]\nExecStart=/bin/true\nProtectSystm=yes\n")
    assert "Unknown key" in verify([typo], tmp_path / "typo").stderr  # the check above can fail


def test_the_units_run_the_broker_unprivileged_and_the_helper_as_root() -> None:
    broker = (REPO / "scripts/systemd/bootbroker.service").read_text()
    helper = (REPO / "scripts/systemd/bootbroker-helper.service").read_text()
    assert "User=bootbroker" in broker and "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in broker
    assert "NoNewPrivileges=yes" in broker and "ProtectSystem=strict" in broker
    assert "User=" not in helper and "RuntimeDirectory=bootbroker" in helper


def test_the_pam_file_names_real_modules_and_never_nullok() -> None:
    lines = [line.split() for line in (REPO / "scripts/pam.d/bootbroker").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert [line[0] for line in lines] == ["auth", "account"]
    for kind, control, module, *args in lines:
        assert control in ("required", "requisite", "sufficient") or re.fullmatch(r"\[.*\]", control)
        assert any((d / module).is_file() for d in PAM_DIRS), f"{module} is not installed"
        assert "nullok" not in args
    assert os.access(INSTALL, os.X_OK)
