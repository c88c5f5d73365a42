#!/usr/bin/env python3
"""Build the iPXE binaries a site's workstations netboot: iPXE from the admin's source tree, with this
directory's embedded script (pointing at the broker) and the broker's certificate as the only trusted root.

  ipxe/build.py --source ~/src/ipxe --url https://boot.example.org --trust /var/lib/bootbroker/tls/broker.crt

Outputs undionly.kpxe (BIOS, chainloaded from PXE) and ipxe.efi (UEFI x86_64). See ipxe/README.md.
Standard library only: it runs on the build machine without the project's venv.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
EMBED_TEMPLATE = HERE / "embed.ipxe"
PLACEHOLDER = "@BROKER_URL@"
TARGETS = {"bios": "bin/undionly.kpxe", "uefi": "bin-x86_64-efi/ipxe.efi"}
HTTPS_DEFINE = "#define DOWNLOAD_PROTO_HTTPS"
EXIT_OK, EXIT_BUILD, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with the arguments; the message says what to change."""


def render_embed(url: str) -> str:
    return EMBED_TEMPLATE.read_text().replace(PLACEHOLDER, url)


def check_url(url: str, insecure_http: bool) -> str:
    parts = urllib.parse.urlsplit(url)
    if re.search(r"\s", url) or parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(f"--url {url!r}: give the broker's base URL, e.g. https://boot.example.org")
    if parts.scheme == "http" and not insecure_http:
        raise UsageError(f"--url {url!r}: plain http sends passwords in clear text; use https (or --insecure-http in a lab)")
    if parts.username is not None or parts.query or parts.fragment or parts.path or "$" in url:
        raise UsageError(f"--url {url!r}: only scheme://host[:port], without a path, user, query or trailing slash")
    return url


def check_source(source: Path) -> Path:
    if not (source / "src" / "Makefile").is_file() or not (source / "src" / "config" / "general.h").is_file():
        raise UsageError(f"--source {source}: not an iPXE source tree (no src/Makefile and src/config/general.h); "
                         "point it at a clone of https://github.com/ipxe/ipxe")
    return source


def check_trust(trust: Path) -> Path:
    try:
        text = trust.read_text(errors="replace")
    except OSError as e:
        raise UsageError(f"--trust {trust}: cannot read it ({e.strerror})") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise UsageError(f"--trust {trust}: not a PEM certificate (the broker's is /var/lib/bootbroker/tls/broker.crt)")
    return trust


def fingerprint(trust: Path) -> str:
    """SHA-256 of the first certificate's DER, as `openssl x509 -fingerprint -sha256` prints it."""
    pem = trust.read_text().split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    digest = hashlib.sha256(base64.b64decode("".join(pem.split()))).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def enable_https(source: Path) -> str | None:
    """Make sure the build has HTTPS (off by default in iPXE) through the supported local config header.
    Returns a note when it wrote the file; refuses to touch an admin's own file that lacks the define."""
    local = source / "src" / "config" / "local" / "general.h"
    if local.exists():
        if HTTPS_DEFINE not in local.read_text():
            raise UsageError(f"{local} exists without {HTTPS_DEFINE!r}; add that line to it (the broker needs HTTPS)")
        return None
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(f"/* Written by bootbroker's ipxe/build.py: the broker is reached over HTTPS. */\n{HTTPS_DEFINE}\n")
    return f"wrote {local} (enables HTTPS; it stays as part of your build configuration)"


def make_commands(source: Path, targets: list[str], embed: Path, trust: Path, jobs: int) -> list[list[str]]:
    return [
        ["make", "-C", str(source / "src"), f"-j{jobs}", TARGETS[t], f"EMBED={embed}", f"TRUST={trust}"]
        for t in targets
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build.py",
        description="Compile iPXE for bootbroker: EMBED= the script that chains the broker, TRUST= the broker's "
                    "certificate, HTTPS enabled. Needs an iPXE source tree and its build tools "
                    "(Debian: build-essential liblzma-dev mtools).",
    )
    parser.add_argument("--source", type=Path, required=True, help="an iPXE source tree (git clone https://github.com/ipxe/ipxe)")
    parser.add_argument("--url", required=True, help="the broker's base URL, as in [broker] url (e.g. https://boot.example.org)")
    parser.add_argument("--trust", type=Path, required=True, help="the broker's certificate (PEM), e.g. /var/lib/bootbroker/tls/broker.crt")
    parser.add_argument("--target", choices=["bios", "uefi", "all"], default="all",
                        help="bios: undionly.kpxe, uefi: ipxe.efi (x86_64), all: both (default)")
    parser.add_argument("--output", type=Path, default=Path("ipxe-build"), help="where the binaries go (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel make jobs (default: %(default)s)")
    parser.add_argument("--insecure-http", action="store_true",
                        help="allow an http:// URL: passwords then cross the network in clear text (VM labs only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        url = check_url(args.url, args.insecure_http)
        source = check_source(args.source.resolve())
        trust = check_trust(args.trust.resolve())
        if args.jobs < 1:
            raise UsageError("--jobs: at least 1")
        if args.insecure_http and url.startswith("http://"):
            print("build.py: WARNING: --insecure-http: passwords and CHAP secrets will cross the network in clear "
                  "text. Use this build in a lab only.", file=sys.stderr)
        note = enable_https(source)
    except UsageError as e:
        print(f"build.py: {e}", file=sys.stderr)
        return EXIT_USAGE
    if note:
        print(f"== {note}")
    targets = ["bios", "uefi"] if args.target == "all" else [args.target]
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bootbroker-ipxe-") as work:
        embed = Path(work) / "bootbroker.ipxe"
        embed.write_text(render_embed(url))
        for target, command in zip(targets, make_commands(source, targets, embed, trust, args.jobs)):
            print(f"== building {target} {TARGETS[target]} (this takes a few minutes)", flush=True)
            if subprocess.run(command, check=False).returncode != 0:
                print(f"build.py: make failed for {TARGETS[target]}; the full log is above", file=sys.stderr)
                return EXIT_BUILD
            built = source / "src" / TARGETS[target]
            shutil.copy2(built, args.output / built.name)
    print("== done")
    for target in targets:
        result = args.output / Path(TARGETS[target]).name
        print(f"   {result} ({result.stat().st_size} bytes)")
    print(f"   chains {url}/boot.ipxe; trusts only {trust}")
    print(f"   whose SHA-256 fingerprint is {fingerprint(trust)} (bootbroker serve prints the same)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
