"""The iPXE a site deploys, built for the lab's workstations by ipxe/build.py exactly as a site runs it.

The source is iPXE's v2.0.0 release tarball, vendored beside the repository (../shared/vendor; another
path with BOOTBROKER_IPXE_TARBALL) and checked against the SHA-256 recorded here. build.py unpacks it once
into the lab cache and builds there; each build's binaries (undionly.kpxe for BIOS, ipxe.efi for UEFI) are
kept under a name made from everything that goes into them: the tarball, the embedded script, build.py
itself, the broker's URL and the trusted certificate. The first build takes 2-3 minutes on two cores;
one for another certificate recompiles about a minute's worth; a cached one costs nothing.

The lab's certificates (`lab_certificate`) are kept in the cache too, so the builds that trust them are
reused from one run to the next; the lab's broker is given one instead of generating its own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from broker.web.tls import ServerCertificate, ensure_certificate
from lab.build import BuildError, cache_dir, log

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "ipxe" / "build.py"
EMBED_SCRIPT = REPO / "ipxe" / "embed.ipxe"
TARBALL = REPO.parent / "shared" / "vendor" / "ipxe-2.0.0.tar.xz"
TARBALL_SHA256 = "e730488ffc0f3e66acbd863f3d9e525c09ad5ef9bb09e9605581de0274a04a68"  # iPXE v2.0.0, 12798ec2
BUILT = ("undionly.kpxe", "ipxe.efi")
VERSION = "2.0.0"  # what the built iPXE's banner says after "iPXE "


def tarball() -> Path:
    """The vendored iPXE release, once its SHA-256 is the recorded one."""
    path = Path(os.environ.get("BOOTBROKER_IPXE_TARBALL") or TARBALL)
    if not path.is_file():
        raise BuildError(f"no iPXE source at {path}: the lab builds iPXE from its v2.0.0 release tarball "
                         "(set BOOTBROKER_IPXE_TARBALL to where it is)")
    digest = _sha256(path.read_bytes())
    if digest != TARBALL_SHA256:
        raise BuildError(f"{path} has SHA-256 {digest}, not iPXE v2.0.0's {TARBALL_SHA256}")
    return path


def lab_certificate(name: str, names: tuple[str, ...], key_type: str = "rsa",
                    cache: Path | None = None) -> ServerCertificate:
    """A broker certificate and key kept in the lab cache under `name` (made by the broker's own generator
    the first time, for `names`, with a `key_type` key), so the iPXE builds that trust it are reused
    between runs."""
    directory = (cache or cache_dir()) / "lab-tls"
    return ensure_certificate(directory / f"{name}.crt", directory / f"{name}.key", list(names), key_type)


def ensure_ipxe(url: str, certificate: Path, cache: Path | None = None) -> Path:
    """The directory holding undionly.kpxe and ipxe.efi that chain `url`/boot.ipxe and trust only
    `certificate`, built with ipxe/build.py unless a build of the same inputs is cached."""
    cache = cache or cache_dir()
    key = hashlib.sha256()
    for part in (TARBALL_SHA256.encode(), EMBED_SCRIPT.read_bytes(), BUILD_SCRIPT.read_bytes(), url.encode(),
                 certificate.read_bytes()):
        key.update(_sha256(part).encode())
    built = cache / f"ipxe-{key.hexdigest()[:16]}"
    if all((built / name).is_file() for name in BUILT):
        return built
    source = tarball()  # read and checked only now: a cached build is keyed by the recorded SHA-256
    log(f"building iPXE {VERSION} with ipxe/build.py for {url}, trusting {certificate.name} "
        "(2-3 min the first time, about 1 min for another certificate)")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".ipxe-") as tmp:
        output, record = Path(tmp) / "out", built.with_suffix(".log")
        argv = [sys.executable, str(BUILD_SCRIPT), "--source", str(source), "--work", str(cache / "ipxe-source"),
                "--url", url, "--trust", str(certificate), "--output", str(output)]
        with record.open("w") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            tail = "\n".join(record.read_text(errors="replace").splitlines()[-30:])
            raise BuildError(f"ipxe/build.py failed (exit status {done.returncode}); the end of {record}:\n{tail}")
        output.rename(built)  # last: an interrupted build is never mistaken for a finished one
    for line in record.read_text().splitlines():
        if line.startswith(("== source", "   undionly", "   ipxe.efi")):
            log(line.strip("= "))
    return built


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
