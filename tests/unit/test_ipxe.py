"""ipxe/: the embedded script and the build helper, with a real `make` on a stand-in iPXE source tree."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from broker.tls import ensure_certificate

BUILD = Path(__file__).parents[2] / "ipxe" / "build.py"
URL = "https://boot.example.org"

# A stand-in for iPXE's src/Makefile: each target records what it was given, as the real one would embed it.
MAKEFILE = """\
bin/undionly.kpxe:
\tmkdir -p bin && cp $(EMBED) bin/embedded-bios.ipxe && echo $(TRUST) > bin/trust-bios && echo bios > $@

bin-x86_64-efi/ipxe.efi:
\tmkdir -p bin-x86_64-efi && cp $(EMBED) bin-x86_64-efi/embedded.ipxe && echo uefi > $@
"""


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ipxe_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "ipxe"
    (source / "src" / "config").mkdir(parents=True)
    (source / "src" / "Makefile").write_text(MAKEFILE)
    (source / "src" / "config" / "general.h").write_text("#undef DOWNLOAD_PROTO_HTTPS\n")
    cert = ensure_certificate(tmp_path / "tls" / "broker.crt", tmp_path / "tls" / "broker.key", ["boot.example.org"])
    return source, cert.certificate


def test_the_embedded_script_chains_the_broker() -> None:
    script = build.render_embed(URL)
    assert script.startswith("#!ipxe\n") and "@" + "BROKER_URL@" not in script
    assert f"chain --replace --autofree {URL}/boot.ipxe ||" in script
    assert script.count("dhcp && goto broker") == 3 and script.rstrip().endswith("exit")


def test_a_build_embeds_the_script_trusts_the_certificate_and_enables_https(
    tree: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, cert = tree
    out = tmp_path / "out"
    assert build.main(["--source", str(source), "--url", URL, "--trust", str(cert), "--output", str(out)]) == 0
    assert (out / "undionly.kpxe").read_text() == "bios\n" and (out / "ipxe.efi").read_text() == "uefi\n"
    assert (source / "src" / "bin" / "embedded-bios.ipxe").read_text() == build.render_embed(URL)
    assert (source / "src" / "bin" / "trust-bios").read_text().strip() == str(cert)
    assert "#define DOWNLOAD_PROTO_HTTPS" in (source / "src" / "config" / "local" / "general.h").read_text()
    printed = capsys.readouterr().out
    fingerprint = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
                                 capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
    assert fingerprint in printed and "undionly.kpxe" in printed


def test_an_admins_own_local_config_without_https_is_left_alone(tree: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    source, cert = tree
    local = source / "src" / "config" / "local" / "general.h"
    local.parent.mkdir(parents=True)
    local.write_text("#define IMAGE_PNG\n")
    assert build.main(["--source", str(source), "--url", URL, "--trust", str(cert)]) == 2
    assert local.read_text() == "#define IMAGE_PNG\n"
    assert "DOWNLOAD_PROTO_HTTPS" in capsys.readouterr().err


def test_a_failing_make_names_the_target(tree: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, cert = tree
    (source / "src" / "Makefile").write_text("bin/undionly.kpxe:\n\tfalse\n")
    argv = ["--source", str(source), "--url", URL, "--trust", str(cert), "--target", "bios", "--output", str(tmp_path / "o")]
    assert build.main(argv) == 1
    assert "make failed for bin/undionly.kpxe" in capsys.readouterr().err


@pytest.mark.parametrize("change, expected", [
    ({"--source": "/nonexistent"}, "not an iPXE source tree"),
    ({"--url": "http://boot.example.org"}, "clear text"),
    ({"--url": "https://user:pw@boot.example.org"}, "without a path, user"),
    ({"--url": "https://boot.example.org/"}, "trailing slash"),
    ({"--url": "https://boot.example.org?x=1"}, "query"),
    ({"--url": "https://boot.example.org\nshell"}, "base URL"),
    ({"--trust": "/etc/hostname"}, "not a PEM certificate"),
    ({"--trust": "/nonexistent.pem"}, "cannot read it"),
])
def test_bad_arguments_are_refused_with_the_reason(
    tree: tuple[Path, Path], capsys: pytest.CaptureFixture[str], change: dict[str, str], expected: str
) -> None:
    source, cert = tree
    args = {"--source": str(source), "--url": URL, "--trust": str(cert), **change}
    assert build.main([item for pair in args.items() for item in pair]) == 2
    assert expected in capsys.readouterr().err
    assert not (source / "src" / "config" / "local").exists()  # nothing written on a refusal


def test_insecure_http_is_allowed_only_when_asked_and_then_warned(tree: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source, cert = tree
    argv = ["--source", str(source), "--url", "http://10.0.2.15:8080", "--trust", str(cert), "--insecure-http",
            "--output", str(tmp_path / "o")]
    assert build.main(argv) == 0
    assert "WARNING" in capsys.readouterr().err


def test_help_explains_the_options() -> None:
    done = subprocess.run([str(BUILD), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    for option in ("--source", "--url", "--trust", "--target", "--insecure-http"):
        assert option in done.stdout
