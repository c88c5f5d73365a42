"""benchmarks/tls_handshakes.py, run for real and briefly: every case measured against the real broker
over loopback, resumption as each case says, and its figures put together as the README reports them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "tls_handshakes.py"


def test_a_short_run_measures_every_case(tmp_path: Path) -> None:
    out = tmp_path / "tls.json"
    done = subprocess.run([sys.executable, str(BENCHMARK), "--rounds", "1", "--duration", "0.5", "--clients", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert [s["case"] for s in results["samples"]] == ["plain HTTP", "RSA full", "RSA resumed", "ECDSA full", "ECDSA resumed"]
    for sample in results["samples"]:
        assert sample["connections"] > 1, sample
        expected = sample["connections"] - 1 if sample["kind"] == "resumed" else 0  # one client: its first is full
        assert sample["resumed"] == expected, sample
    rows = {row["case"]: row for row in results["rows"]}
    assert rows["plain HTTP"]["tls_ms"] == 0
    assert rows["RSA full"]["tls_ms"] == rows["RSA full"]["cpu_ms"] - rows["plain HTTP"]["cpu_ms"]
    assert set(results["ecdsa_over_rsa"]) == {"full", "resumed"}
    assert "RSA-2048" in done.stdout and "ECDSA P-256" in done.stdout


def test_help_says_what_is_measured() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARK), "--help"], capture_output=True, text=True, check=True)
    assert "broker's own CPU" in done.stdout and "--rounds" in done.stdout and "resumed" in done.stdout
