#!/usr/bin/env python3
"""Build the iPXE binaries a site's workstations netboot: iPXE from the admin's source tree, with this
directory's embedded script (pointing at the broker) and the broker's certificate as the only trusted root.

  ipxe/build.py --source ~/src/ipxe --url https://boot.example.org --trust /var/lib/bootbroker/tls/broker.crt

--source is a clone or iPXE's release tarball (unpacked once into --work and built there, so a rebuild for a
new certificate recompiles only what changed). Outputs undionly.kpxe (BIOS, chainloaded from PXE) and ipxe.efi (UEFI x86_64). See ipxe/README.md.
Standard library only: it runs on the build machine without the project's venv.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EMBED_TEMPLATE = HERE / "embed.ipxe"
PLACEHOLDER = "@BROKER_URL@"
# what --target names -> (what the output calls it, iPXE's make target)
TARGETS = {"bios": ("BIOS", "bin/undionly.kpxe"), "uefi": ("UEFI", "bin-x86_64-efi/ipxe.efi")}
HTTPS_DEFINE = "#define DOWNLOAD_PROTO_HTTPS"
HTTPS_DIRECTIVE = re.compile(r"^[ \t]*#[ \t]*(define|undef)[ \t]+DOWNLOAD_PROTO_HTTPS\b", re.MULTILINE)
# scheme://host[:port] and nothing else: the URL lands in the embedded script, `/boot.ipxe` is appended to it
URL_SHAPE = re.compile(r"https?://(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?")
# iPXE's Makefile puts EMBED= and TRUST= paths into shell commands and C strings without quoting them
SAFE_PATH = re.compile(r"[A-Za-z0-9._/+-]+")
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL)
IPXE_CLONE = "https://github.com/ipxe/ipxe"
TARBALL_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")
UNPACKED = ".bootbroker-unpacked"  # in a tarball's tree under --work: the SHA-256 of the tarball it came from
EXIT_OK, EXIT_BUILD, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with the arguments or the build machine; the message says what to change."""


def say(text: str) -> None:
    # flushed, so our lines stay in order with make's output when stdout is a pipe or a log file
    print(text, flush=True)


def render_embed(url: str) -> str:
    """The embedded script with the broker's base URL (already checked by check_url) filled in."""
    if not URL_SHAPE.fullmatch(url):
        raise ValueError(f"{url!r} cannot go into the embedded script")
    template = EMBED_TEMPLATE.read_text()
    if PLACEHOLDER not in template:
        raise ValueError(f"{EMBED_TEMPLATE} has no {PLACEHOLDER}")
    return template.replace(PLACEHOLDER, url)


def check_url(url: str, insecure_http: bool) -> str:
    """The broker's base URL as in [broker] url: https://HOST[:PORT], nothing after it."""
    def refuse(problem: str) -> UsageError:
        return UsageError(f"--url {url!r} {problem}")

    if not url.isprintable() or any(c.isspace() for c in url):
        raise refuse("has whitespace or control characters")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("https", "http"):
        raise refuse("is not the broker's base URL: give https://HOST[:PORT], e.g. https://boot.example.org")
    if scheme == "http" and not insecure_http:
        raise refuse("is plain http: passwords and CHAP secrets would cross the network in clear text; "
                     "use https:// (or --insecure-http, for a lab only)")
    if "@" in rest:
        raise refuse("carries user info: give no user name or password in it")
    if "?" in rest:
        raise refuse("has a query: give just scheme://HOST[:PORT]")
    if "#" in rest:
        raise refuse("has a fragment: give just scheme://HOST[:PORT]")
    if rest.endswith("/"):
        raise refuse("has a trailing slash: leave it out, the script appends /boot.ipxe")
    if "/" in rest:
        raise refuse("has a path: the broker serves /boot.ipxe at its root, give just scheme://HOST[:PORT]")
    shape = URL_SHAPE.fullmatch(url)
    if not shape:
        raise refuse("has no valid host: give a DNS name, an IPv4 address or [IPv6], optionally with :PORT")
    if shape.group(1) is not None and not 1 <= int(shape.group(1)) <= 65535:
        raise refuse("has a port outside 1-65535")
    return url


def check_source(source: Path) -> Path:
    if not source.exists():
        raise UsageError(f"--source {source} does not exist; point it at a clone of {IPXE_CLONE}")
    if (source / "Makefile.housekeeping").is_file():
        raise UsageError(f"--source {source} is iPXE's src/ directory; point it at the directory above it")
    missing = [name for name in ("src/Makefile", "src/config/general.h") if not (source / name).is_file()]
    if missing:
        raise UsageError(f"--source {source} is not an iPXE source tree (no {' and no '.join(missing)}); "
                         f"point it at a clone of {IPXE_CLONE}")
    return source


def default_work() -> Path:
    """Where tarballs are unpacked and built: the user's cache directory (XDG_CACHE_HOME, ~/.cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bootbroker" / "ipxe"


def is_tarball(source: Path) -> bool:
    return source.is_file() and source.name.endswith(TARBALL_SUFFIXES)


def unpack(tarball: Path, work: Path) -> tuple[Path, str]:
    """The source tree of an iPXE release tarball, unpacked into `work` the first time and found there the next
    (a tree per tarball, named by its SHA-256: a rebuild recompiles only what changed). Returns the tree and
    what happened, for the output."""
    digest = hashlib.sha256()
    with tarball.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    sha = digest.hexdigest()
    name = tarball.name
    for suffix in TARBALL_SUFFIXES:
        name = name.removesuffix(suffix)
    home = work / f"{name}-{sha[:16]}"
    stamp = home / UNPACKED
    if stamp.is_file() and stamp.read_text().strip() == sha:
        trees = [p for p in home.iterdir() if p.is_dir()]
        if len(trees) == 1:
            return trees[0], f"source: {tarball.name} (SHA-256 {sha}), unpacked before in {trees[0]}"
    if home.exists():  # a half-finished unpack: start again
        shutil.rmtree(home)
    work.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=work))
    # GNU tar refuses members with absolute names or "..": nothing lands outside the new directory.
    done = subprocess.run(["tar", "-x", "--no-same-owner", "-f", str(tarball), "-C", str(partial)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(partial)
        raise UsageError(f"--source {tarball}: tar could not unpack it: {done.stderr.strip() or done.returncode}")
    trees = [p for p in partial.iterdir()]
    if len(trees) != 1 or not trees[0].is_dir():
        shutil.rmtree(partial)
        raise UsageError(f"--source {tarball} does not hold one top directory (as iPXE's release tarballs do); "
                         "unpack it yourself and give the directory")
    (partial / UNPACKED).write_text(sha + "\n")
    partial.rename(home)
    tree = home / trees[0].name
    return tree, f"source: {tarball.name} (SHA-256 {sha}), unpacked into {tree}"


def check_trust(trust: Path) -> bytes:
    """The certificate file's bytes, once they are known to hold a PEM certificate."""
    try:
        data = trust.read_bytes()
    except OSError as e:
        raise UsageError(f"--trust {trust}: cannot read it ({e.strerror})") from None
    text = data.decode("ascii", errors="replace")
    if not text.lstrip().startswith("-----BEGIN CERTIFICATE-----"):
        raise UsageError(f"--trust {trust} is not a PEM certificate (it does not start with "
                         "-----BEGIN CERTIFICATE-----); give the broker's, /var/lib/bootbroker/tls/broker.crt")
    try:
        fingerprint(data)
    except ValueError as e:
        raise UsageError(f"--trust {trust} is not a PEM certificate: {e}") from None
    return data


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the first certificate's DER, as `openssl x509 -noout -fingerprint -sha256` prints it
    (and as iPXE's build computes it for TRUST=, which also reads only the first certificate)."""
    found = PEM_CERTIFICATE.search(pem.decode("ascii", errors="replace"))
    if not found:
        raise ValueError("no -----END CERTIFICATE----- line")
    try:
        der = base64.b64decode("".join(found.group(1).split()), validate=True)
    except binascii.Error:
        raise ValueError("its body is not base64") from None
    if not der.startswith(b"\x30"):
        raise ValueError("its body is not a DER certificate")
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def check_tools() -> None:
    for tool, why in (("make", "to build iPXE"), ("openssl", "iPXE's build reads TRUST= with it")):
        if shutil.which(tool) is None:
            raise UsageError(f"{tool} not found ({why}); on Debian: apt-get install build-essential openssl")


def enable_https(source: Path) -> str:
    """Make sure the build has HTTPS (off by default in iPXE's config/general.h) through the supported local
    config header, src/config/local/general.h, which config/general.h includes last. iPXE's own make creates
    that file empty; an empty one is filled in, an admin's own one is never changed.
    Returns what it found or did, for the output."""
    local = source / "src" / "config" / "local" / "general.h"
    if local.exists():
        text = local.read_text(errors="replace")
        directives = HTTPS_DIRECTIVE.findall(text)
        if directives and directives[-1] == "define":
            return f"HTTPS: {local} already has {HTTPS_DEFINE}"
        if text.strip():
            raise UsageError(f"{local} is your own build configuration and does not enable HTTPS; "
                             f"add the line '{HTTPS_DEFINE}' at its end (the broker is reached over HTTPS)")
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text("/* Written by bootbroker's ipxe/build.py: workstations reach the broker over HTTPS,\n"
                     " * which iPXE's config/general.h leaves out. Your build configuration from now on. */\n"
                     f"{HTTPS_DEFINE}\n")
    return f"HTTPS: wrote {local} with {HTTPS_DEFINE} (it stays, as part of your build configuration)"


def make_commands(targets: list[str], embed: Path, trust: Path, jobs: int) -> list[list[str]]:
    """One make per target, run in <source>/src; argument lists, never a shell."""
    return [["make", "-j", str(jobs), TARGETS[t][1], f"EMBED={embed}", f"TRUST={trust}"] for t in targets]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile iPXE for bootbroker from iPXE's source: a clone or a release tarball.\n\n"
                    "The binaries get: the embedded script ipxe/embed.ipxe (EMBED=), which does dhcp and chains\n"
                    "URL/boot.ipxe; the broker's certificate as the only trusted root (TRUST=); HTTPS, switched on\n"
                    "by #define DOWNLOAD_PROTO_HTTPS in <source>/src/config/local/general.h (written if absent or\n"
                    "empty; an existing file of yours without it is refused, never changed). The script and a\n"
                    "copy of the certificate go to a temporary directory, never into the source tree.",
        epilog="Needs on Debian: build-essential liblzma-dev mtools openssl, xz-utils for a .tar.xz, git to clone.\n"
               "Exit status: 0 built, 1 make failed (its log is above), 2 bad arguments or build machine.\n"
               "Then: put the binaries on the TFTP server, see ipxe/README.md.",
    )
    parser.add_argument("--source", type=Path, required=True,
                        help=f"top of an iPXE source tree (git clone {IPXE_CLONE}; src/ inside it is built), "
                             "or iPXE's release tarball (.tar.xz, .tar.gz, ...), unpacked once into --work")
    parser.add_argument("--work", type=Path, default=None,
                        help="where a tarball --source is unpacked and built, kept so that the next build (a new "
                             "certificate) recompiles only what changed (default: $XDG_CACHE_HOME/bootbroker/ipxe, "
                             "i.e. ~/.cache/bootbroker/ipxe)")
    parser.add_argument("--url", required=True,
                        help="the broker's base URL, as in [broker] url: https://HOST[:PORT], no path, user, "
                             "query or trailing slash (e.g. https://boot.example.org)")
    parser.add_argument("--trust", type=Path, required=True,
                        help="the broker's certificate (PEM), e.g. /var/lib/bootbroker/tls/broker.crt copied from "
                             "the broker host; iPXE will trust it and nothing else")
    parser.add_argument("--target", choices=["bios", "uefi", "all"], default="all",
                        help="bios: bin/undionly.kpxe; uefi: bin-x86_64-efi/ipxe.efi; all: both (default)")
    parser.add_argument("--output", type=Path, default=Path("ipxe-build"),
                        help="directory the binaries are copied to (default: ./%(default)s)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel make jobs (default: %(default)s, the number of CPUs)")
    parser.add_argument("--insecure-http", action="store_true",
                        help="allow an http:// URL: passwords and CHAP secrets then cross the network in clear "
                             "text. For a VM lab only, never a real network")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, or argparse's own usage error (already printed)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        url = check_url(args.url, args.insecure_http)
        trust = args.trust.resolve()
        certificate = check_trust(trust)
        if args.jobs < 1:
            raise UsageError(f"--jobs {args.jobs}: give at least 1")
        check_tools()
        source_note = None
        source = args.source.resolve()
        if is_tarball(source):
            source, source_note = unpack(source, (args.work or default_work()).resolve())
        elif args.work is not None:
            raise UsageError(f"--work is for a tarball --source; {args.source} is built where it is")
        source = check_source(source)
        output = args.output.resolve()
        if output.exists() and not output.is_dir():
            raise UsageError(f"--output {output} exists and is not a directory")
        https_note = enable_https(source)
        output.mkdir(parents=True, exist_ok=True)
    except (UsageError, OSError) as e:
        print(f"build.py: {e}", file=sys.stderr)
        return EXIT_USAGE
    insecure = url.startswith("http://")
    if insecure:
        print("build.py: WARNING: --insecure-http: this iPXE talks plain HTTP, so passwords and CHAP secrets cross "
              "the network in clear text. Use it in a lab only.", file=sys.stderr, flush=True)
    targets = ["bios", "uefi"] if args.target == "all" else [args.target]
    if source_note:
        say(f"== {source_note}")
    say(f"== {https_note}")
    with tempfile.TemporaryDirectory(prefix="bootbroker-ipxe-") as work:
        if not SAFE_PATH.fullmatch(work):
            print(f"build.py: the temporary directory {work} has characters iPXE's Makefile cannot take; "
                  "set TMPDIR=/tmp", file=sys.stderr)
            return EXIT_USAGE
        # A fresh path on every run: iPXE rebuilds embedded.o and rootcert.o when the EMBED=/TRUST= paths
        # change, but not when a certificate at the same path is replaced; a copy makes every build current.
        embed, trusted = Path(work) / "bootbroker.ipxe", Path(work) / "broker.crt"
        embed.write_text(render_embed(url))
        trusted.write_bytes(certificate)
        say(f"== embedded script: dhcp, then chain {url}/boot.ipxe")
        for target, command in zip(targets, make_commands(targets, embed, trusted, args.jobs)):
            label, make_target = TARGETS[target]
            say(f"== building {label} {Path(make_target).name} (this takes a few minutes)")
            say(f"   in {source / 'src'}: {shlex.join(command)}")
            done = subprocess.run(command, cwd=source / "src", check=False)
            built = source / "src" / make_target
            if done.returncode != 0 or not built.is_file():
                why = f"exit status {done.returncode}" if done.returncode else f"no {built} after it"
                print(f"build.py: make failed for {label} {make_target} ({why}); the full log is above",
                      file=sys.stderr)
                return EXIT_BUILD
            shutil.copyfile(built, output / built.name)
    say(f"== done: in {output}")
    for target in targets:
        result = output / Path(TARGETS[target][1]).name
        say(f"   {result.name:14} {result.stat().st_size:>9,} bytes  ({TARGETS[target][0]})")
    say(f"   they chain {url}/boot.ipxe and trust only the certificate {trust},")
    say(f"   SHA-256 fingerprint {fingerprint(certificate)}")
    say("   which must match the one `bootbroker serve` printed on its first start.")
    if insecure:
        say("   WARNING: plain HTTP build (--insecure-http): for a lab only.")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
