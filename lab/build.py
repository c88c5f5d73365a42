"""Prepare everything the VM lab boots from: host tools, Debian's kernel, a busybox initramfs.

Idempotent and cached: a second call only checks that nothing changed (a few cheap queries).
Runs as root on a Debian 12 host, because it installs packages and writes under /var/cache.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path("/var/cache/bootbroker-lab")

HOST_PACKAGES = (
    "qemu-system-x86", "qemu-utils", "qemu-block-extra", "busybox-static", "libiscsi-bin",
    "btrfs-progs", "xfsprogs", "e2fsprogs", "dmsetup", "kmod", "cpio",
    # the broker's tests: TLS handshakes (openssl s_client), HTTP clients, the iPXE build helper's make
    "openssl", "curl", "make", "libpam-modules",
    # the bootable golden image the lab's iPXE workstations boot (lab/golden.py)
    "extlinux", "syslinux-common", "fdisk",
    # the workstations' iPXE, built from its release tarball by ipxe/build.py (lab/ipxe_build.py): what
    # ipxe/README.md tells sites to install (git aside: the lab builds from the tarball)
    "build-essential", "liblzma-dev", "xz-utils",
    # the real OS (lab/realos.py): bootbroker images build's tools, and UEFI workstations' firmware
    "mmdebstrap", "dosfstools", "mtools", "ovmf",
    # bootbroker images check (broker/images/check.py): lsinitramfs/unmkinitramfs, and zstd for Debian 12's initrds
    "initramfs-tools-core", "zstd",
    # a real OS boot's disk I/O is recorded as a fio iolog (lab/bootio.py): fio checks that it replays
    "fio",
)

# Only for the benchmarks (scripts/lab bench): the mktgt approach's userspace target, tgtd; and the kernel
# iSCSI initiator's tools (iscsid, iscsiadm), whose sessions replay real boots at once (benchmarks/boot_replay.py).
BENCH_PACKAGES = ("tgt", "open-iscsi")

# The metapackage tracks the current Debian 12 kernel ABI; we boot the package it depends on.
KERNEL_META = "linux-image-amd64"

# Everything the guest needs before its root exists (virtio, 9p, overlay) and everything the
# tests need from the kernel. Their dependencies are added by modprobe --show-depends.
# crc32c_generic: btrfs and xfs ask the crypto API for "crc32c", which nothing would autoload.
MODULES = (
    "virtio_pci", "virtio_net", "virtio_blk", "9p", "9pnet_virtio", "overlay",
    "configfs", "target_core_mod", "target_core_file", "target_core_iblock", "iscsi_target_mod",
    "dm-mod", "dm-snapshot", "dm-thin-pool", "loop", "crc32c_generic", "btrfs", "xfs", "ext4",
)

INIT_SCRIPT = Path(__file__).with_name("init")
# The golden image's own initramfs (lab/golden.py): it prints the iBFT that iPXE left for the OS.
GOLDEN_INIT = Path(__file__).with_name("golden-init")
GOLDEN_MODULES = ("iscsi_ibft",)
BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class Build:
    """What qemu boots: the kernel image, the initramfs, and the full module tree for the guest; and the
    kernel (bzImage) and initramfs that the lab's bootable golden image carries."""

    kernel: Path
    initrd: Path
    modules: Path
    version: str
    bzimage: Path
    golden_initrd: Path


class BuildError(RuntimeError):
    """The lab cannot be prepared on this host; the message says what to fix."""


def log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("BOOTBROKER_LAB_CACHE") or DEFAULT_CACHE)


def ensure_build(cache: Path | None = None) -> Build:
    """Install missing host tools, then fetch the kernel and build the initramfs unless cached."""
    cache = cache or cache_dir()
    ensure_host_packages()
    cache.mkdir(parents=True, exist_ok=True)
    root, version = ensure_kernel(cache, *kernel_package())
    modules = root / "lib" / "modules" / version
    bzimage = root / "boot" / f"vmlinuz-{version}"
    return Build(
        kernel=ensure_vmlinux(bzimage),
        initrd=ensure_initrd(cache, modules, version),
        modules=modules,
        version=version,
        bzimage=bzimage,
        golden_initrd=ensure_initrd(cache, modules, version, GOLDEN_INIT, GOLDEN_MODULES, "golden-initrd"),
    )


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    kwargs.setdefault("text", True)
    return subprocess.run(argv, check=True, **kwargs)


def _apt(argv: list[str], cwd: Path | None = None) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # -q: no progress bars in logs; apt's own output goes to stderr with our progress lines.
    _run([argv[0], "-q", *argv[1:]], cwd=cwd, env=env, stdout=sys.stderr)


def _apt_update() -> None:
    log("apt-get update")
    _apt(["apt-get", "update"])


def ensure_host_packages(packages: tuple[str, ...] = HOST_PACKAGES) -> None:
    installed = _installed(packages)
    missing = [p for p in packages if p not in installed]
    if not missing:
        return
    if os.geteuid() != 0:
        raise BuildError(f"missing packages {' '.join(missing)}: run scripts/lab setup as root")
    if _apt_show(missing) is None:
        _apt_update()
    log(f"installing {' '.join(missing)}")
    # Recommends would pull a GUI stack into a headless lab.
    _apt(["apt-get", "install", "-y", "--no-install-recommends", *missing])


def _installed(packages: tuple[str, ...]) -> set[str]:
    # dpkg-query fails for names it has never seen; the output still lists the known ones.
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *packages],
        capture_output=True, text=True, check=False,
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["ii"]}


def _apt_show(packages: list[str]) -> str | None:
    """apt-cache's record of the candidate versions, or None if it does not know them all."""
    probe = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *packages],
        capture_output=True, text=True, check=False,
    )
    return probe.stdout if probe.returncode == 0 else None


def kernel_package() -> tuple[str, str]:
    """Name and version of the concrete kernel package the metapackage depends on."""
    show = _apt_show([KERNEL_META])
    if show is None:
        _apt_update()
        show = _apt_show([KERNEL_META])
    if show is None:
        raise BuildError(f"apt knows no {KERNEL_META}: check /etc/apt/sources.list*")
    for line in show.splitlines():
        if line.startswith("Depends:"):
            # "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
            name, _, version = line.split(":", 1)[1].split(",")[0].split()[:3]
            return name, version.rstrip(")")
    raise BuildError(f"{KERNEL_META} has no Depends line:\n{show}")


def ensure_kernel(cache: Path, package: str, version: str) -> tuple[Path, str]:
    """Unpack the kernel package into cache/<package>_<version> and index its modules."""
    root = cache / f"{package}_{version}"
    kernel_version = package.removeprefix("linux-image-")
    if not root.is_dir():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            deb = _download(package, version, Path(tmp))
            log(f"unpacking {deb.name}")
            _run(["dpkg", "-x", str(deb), f"{tmp}/root"])
            _run(["depmod", "-b", f"{tmp}/root", kernel_version])
            # Rename last, so an interrupted build is never mistaken for a finished one.
            Path(tmp, "root").rename(root)
        _prune(cache, keep=root.name, pattern="linux-image-*")
    return root, kernel_version


def ensure_vmlinux(bzimage: Path) -> Path:
    """The uncompressed kernel ELF next to the bzImage.

    qemu boots it directly (PVH entry point), skipping SeaBIOS's loader and an xz decompression
    that takes seconds under TCG: about 6 s less per boot.
    """
    vmlinux = bzimage.with_name(bzimage.name.replace("vmlinuz", "vmlinux"))
    if not vmlinux.exists():
        data = bzimage.read_bytes()
        start = data.find(b"\xfd7zXZ\x00")
        if start < 0:
            raise BuildError(f"{bzimage} holds no xz-compressed kernel")
        log(f"decompressing {bzimage.name}")
        tmp = vmlinux.with_suffix(".tmp")
        # The xz stream is followed by other data; the decompressor stops at its end.
        tmp.write_bytes(lzma.LZMADecompressor().decompress(data[start:]))
        tmp.rename(vmlinux)
    return vmlinux


def _download(package: str, version: str, into: Path) -> Path:
    log(f"downloading {package}={version}")
    # As root into our own directory: apt's _apt sandbox user could not write there.
    download = ["apt-get", "-o", "APT::Sandbox::User=root", "download", f"{package}={version}"]
    try:
        _apt(download, cwd=into)
    except subprocess.CalledProcessError:
        # Stale package lists name a version the mirror no longer has.
        log("download failed: the package lists may be stale")
        _apt_update()
        _apt(download, cwd=into)
    return next(into.glob(f"{package}_*.deb"))


# Debian 13's iPXE has HTTPS (Debian 12's has not). Its packages come from a trixie source list kept in a
# private apt directory under the cache: the host's own apt sources and state are never touched.
TRIXIE_SOURCES = (
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n"
)
TRIXIE_IPXE = "ipxe-qemu"


def ensure_trixie_ipxe(cache: Path | None = None) -> Path:
    """Debian 13's iPXE NIC ROMs (ipxe-qemu), unpacked; returns the directory holding pxe-virtio.rom."""
    cache = cache or cache_dir()
    apt_dir = cache / "apt-trixie"
    unpacked = cache / "ipxe-trixie"
    roms = unpacked / "usr" / "share" / "qemu"
    if (roms / "pxe-virtio.rom").exists():
        return roms
    for sub in ("lists/partial", "archives/partial"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources.list").write_text(TRIXIE_SOURCES)
    private = [
        "-o", f"Dir::Etc::SourceList={apt_dir / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={apt_dir / 'lists'}", "-o", f"Dir::Cache={apt_dir}",
        "-o", "Dir::State::Status=/dev/null", "-o", "APT::Sandbox::User=root",
    ]
    log(f"apt-get update for Debian 13 (trixie) in {apt_dir}, the host's apt is not touched")
    _apt(["apt-get", *private, "update"])
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        log(f"downloading Debian 13's {TRIXIE_IPXE}")
        _apt(["apt-get", *private, "download", TRIXIE_IPXE], cwd=Path(tmp))
        deb = next(Path(tmp).glob(f"{TRIXIE_IPXE}_*.deb"))
        _run(["dpkg", "-x", str(deb), f"{tmp}/root"])
        shutil.rmtree(unpacked, ignore_errors=True)
        Path(tmp, "root").rename(unpacked)  # last: an interrupted unpack is never mistaken for a finished one
    return roms


def _prune(cache: Path, keep: str, pattern: str) -> None:
    for old in cache.glob(pattern):
        if old.name != keep:
            log(f"removing old {old.name}")
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()


def module_files(modules: Path, version: str, names: tuple[str, ...] = MODULES) -> list[Path]:
    """Every .ko to insmod for `names`, dependencies first, built-in modules left out."""
    ordered: list[Path] = []
    for name in names:
        out = _run(
            ["modprobe", "-d", str(modules.parents[2]), "-S", version, "--show-depends", name],
            capture_output=True,
        ).stdout
        for line in out.splitlines():
            # "insmod /path/x.ko [options]" or "builtin x"
            words = line.split()
            if words[0] == "insmod" and Path(words[1]) not in ordered:
                ordered.append(Path(words[1]))
    return ordered


def ensure_initrd(cache: Path, modules: Path, version: str, init: Path = INIT_SCRIPT,
                  names: tuple[str, ...] = MODULES, prefix: str = "initrd") -> Path:
    """A busybox initramfs running `init` with the modules `names`; its name is a hash of its inputs, so a
    change means a rebuild."""
    files = module_files(modules, version, names)
    digest = hashlib.sha256()
    for part in (init, BUSYBOX, *files):
        # Names and contents, not paths: clones elsewhere share one cached initramfs.
        digest.update(part.name.encode() + b"\0" + part.read_bytes())
    initrd = cache / f"{prefix}-{digest.hexdigest()[:16]}.img"
    if not initrd.exists():
        log(f"building {initrd.name} ({len(files)} modules)")
        tmp = initrd.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(_cpio(files, init), compresslevel=6))
        tmp.rename(initrd)
        _prune(cache, keep=initrd.name, pattern=f"{prefix}-*")
    return initrd


def _cpio(files: list[Path], init: Path) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        (stage / "bin").mkdir()
        (stage / "modules").mkdir()
        shutil.copy2(BUSYBOX, stage / "bin" / "busybox")
        shutil.copy2(init, stage / "init")
        (stage / "init").chmod(0o755)
        for ko in files:
            shutil.copy2(ko, stage / "modules" / ko.name)
        # init loads the modules in this order.
        (stage / "modules" / "order").write_text("".join(f"{ko.name}\n" for ko in files))
        names = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
        listing = "".join(f"{name}\n" for name in names).encode()
        archive: bytes = _run(
            ["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
            cwd=stage, input=listing, capture_output=True, text=False,
        ).stdout
        return archive
