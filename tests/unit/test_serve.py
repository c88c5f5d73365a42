"""`bootbroker serve` for real on loopback: certificate on first start, HTTPS, health without a helper."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cli import main
from broker.shared.errors import BadRequest, InternalError
from broker.web.serve import ThreadedHelper

CONFIG = """
[store]
path = "/srv/bootbroker"
[helper]
socket = "{tmp}/helper.sock"
[iscsi]
domain = "lab.example.org"
date = "2026-11"
portals = ["192.0.2.10:3260"]
[broker]
url = "{scheme}://127.0.0.1:{port}"
listen = ["127.0.0.1:{port}"]
certificate = "{tmp}/tls/broker.crt"
key = "{tmp}/tls/broker.key"
insecure_http = {insecure}
[images.demo]
description = "Demo disk"
users = ["*"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(tmp_path: Path, insecure: bool) -> tuple[subprocess.Popen[str], int, list[str]]:
    port = free_port()
    config = tmp_path / "bootbroker.toml"
    config.write_text(CONFIG.format(
        tmp=tmp_path, port=port, scheme="http" if insecure else "https", insecure=str(insecure).lower()
    ))
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "--config", str(config), "serve"],
        stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "broker ready" in line:
            return process, port, lines
    process.wait()
    pytest.fail("serve exited before it was ready:\n" + "".join(lines))


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, list[str]]]:
    process, port, lines = start(tmp_path, request.param)
    try:
        yield port, lines
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


@pytest.mark.parametrize("served", [False], indirect=True)
def test_serve_makes_its_certificate_and_answers_over_https(served: tuple[int, list[str]], tmp_path: Path) -> None:
    port, lines = served
    cert = tmp_path / "tls" / "broker.crt"
    assert (tmp_path / "tls" / "broker.key").stat().st_mode & 0o777 == 0o600
    printed = "".join(lines)
    fingerprint = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
        capture_output=True, text=True, check=True,
    ).stdout.strip().split("=", 1)[1]
    assert fingerprint in printed and "TRUST=" in printed
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/boot.ipxe", context=context) as response:
        script = response.read().decode()
    assert script.startswith("#!ipxe") and f"@127.0.0.1:{port}/login.ipxe" in script
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=context)
    assert info.value.code == 503
    assert json.loads(info.value.read())["helper"]["error"] == "helper_unavailable"


@pytest.mark.parametrize("served", [True], indirect=True)
def test_insecure_http_is_loud(served: tuple[int, list[str]]) -> None:
    port, lines = served
    assert any("INSECURE" in line and "clear text" in line for line in lines)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/boot.ipxe") as response:
        assert response.read().startswith(b"#!ipxe")


def test_serve_needs_a_broker_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "helper-only.toml"
    config.write_text(CONFIG.format(tmp=tmp_path, port=1, scheme="https", insecure="false").split("[broker]")[0]
                      + '[images.demo]\ndescription = "Demo disk"\nusers = ["*"]\n')
    assert main(["--config", str(config), "serve"]) == 3
    assert "[broker]: missing" in capsys.readouterr().err


class RefusingClient:
    """A helper client whose helper does not know the operation (another version): BadRequest."""

    def call(self, op: str, **args: object) -> object:
        raise BadRequest("unknown operation; known: ensure_session, health")


async def test_a_request_the_helper_refuses_is_the_brokers_fault_not_the_workstations() -> None:
    helper = ThreadedHelper(RefusingClient())  # type: ignore[arg-type]
    try:
        with pytest.raises(InternalError, match="the helper refused the broker's published: bad_request"):
            await helper.published()
    finally:
        helper.close()
