"""What must hold between a helper's store, its session records and the kernel, checked from outside.

Run as root in the lab VM: `python -m lab.invariants STORE TARGET_PREFIX BACKEND` prints a JSON list of
the problems found (empty when all is well). It reads configfs, `dmsetup` and `losetup` directly, not
through the helper or rtslib, so it can judge the helper's repairs after a crash:
- no half-made work: the scratch directory is empty, every overlay and backup has its meta.json, every
  image version up to the current one has its checksum and none is newer than the current one, and no
  kernel or initrd is kept without its version;
- every target, storage object, dm device and loop device belongs to an overlay that exists (dm-thin: or to
  the store's pool); dm-thin: every overlay and backup names its own thin volume, and a device of an
  overlay maps that volume;
- every target exports LUN 0 and has at most one NodeACL that maps it, which is its live session's (as
  recorded), with the recorded CHAP credentials, and at most one other, a fence that maps no LUN; every
  recorded session has its overlay, its target and its ACL.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

TARGETS = Path("/sys/kernel/config/target")
STORAGE_OBJECT_PREFIX = "bb."
POOL_PREFIX = "bb-pool-"  # dm-thin's pool (broker/helper/backends/dmthin.py)
BOOT_FILES = ("vmlinuz", "initrd.img")  # a version's own kernel and initrd, kept beside it as v<N>.<name>


def problems(store: Path, prefix: str, backend: str) -> list[str]:
    found: list[str] = []
    found += [f"left in the scratch directory: {p.name}" for p in (store / "tmp").iterdir()]
    overlays = {(p.parent.name, p.name) for p in (store / "overlays").glob("*/*")}
    for image, label in sorted(overlays):
        if not (store / "overlays" / image / label / "meta.json").is_file():
            found.append(f"overlay {image}/{label} has no meta.json")
    found += [f"backup {p} has no meta.json" for p in (store / "backups").glob("*/*/*") if not (p / "meta.json").is_file()]
    found += _image_problems(store / "images")

    sessions = {}
    for record in (store / "sessions").glob("*.json"):
        data = json.loads(record.read_text())
        sessions[f"{prefix}:{data['image']}.{data['label']}"] = data
        if (data["image"], data["label"]) not in overlays:
            found.append(f"session of {data['user']} on {data['image']} has no overlay")

    targets = {t.name: t for t in (TARGETS / "iscsi").glob(f"{prefix}:*")}
    for name, target in sorted(targets.items()):
        image, _, label = name.split(":", 1)[1].partition(".")
        if (image, label) not in overlays:
            found.append(f"target {name}: its overlay is gone")
        tpg = target / "tpgt_1"
        luns = [link.name for link in (tpg / "lun" / "lun_0").iterdir() if link.is_symlink()] if (tpg / "lun" / "lun_0").is_dir() else []
        if luns == []:
            found.append(f"target {name} exports no LUN 0")
        acls = sorted(p.name for p in (tpg / "acls").iterdir()) if (tpg / "acls").is_dir() else []
        mapping = [acl for acl in acls if (tpg / "acls" / acl / "lun_0").is_dir()]
        fences = [acl for acl in acls if acl not in mapping]
        session = sessions.get(name)
        expected = [session["initiator"]] if session else []
        if mapping != expected:
            found.append(f"target {name}: NodeACLs mapping LUN 0 {mapping}, live session {expected}")
        elif len(fences) > 1:
            found.append(f"target {name}: fences {fences}, at most one besides the live session {expected}")
        elif session:
            auth = tpg / "acls" / session["initiator"] / "auth"
            if ((auth / "userid").read_text().strip(), (auth / "password").read_text().strip()) != (
                    session["chap_user"], session["chap_secret"]):
                found.append(f"target {name}: the NodeACL's CHAP credentials are not the recorded ones")
    for name in sessions:
        if name not in targets:
            found.append(f"recorded session on {name} has no target")

    for so in TARGETS.glob(f"core/*_*/{STORAGE_OBJECT_PREFIX}*"):
        if _overlay_of(so.name) not in overlays:
            found.append(f"storage object {so.parent.name}/{so.name}: its overlay is gone")
    if backend in ("dm-snapshot", "dm-thin"):
        found += _device_problems(store, overlays)
    if backend == "dm-thin":
        found += _thin_problems(store)
    return found


def _image_problems(images: Path) -> list[str]:
    found = []
    for directory in sorted(images.iterdir()):
        versions = _numbered(directory, "img")
        current = int((directory / "current").read_text()) if (directory / "current").exists() else 0
        found += [f"{directory.name} v{v} is newer than the current v{current}" for v in versions if v > current]
        checksums = _numbered(directory, "sha256")
        if checksums != versions:
            found.append(f"{directory.name}: versions {versions} but checksums of {checksums}")
        for name in BOOT_FILES:
            orphans = sorted(set(_numbered(directory, name)) - set(versions))
            found += [f"{directory.name} v{v}.{name} has no version" for v in orphans]
    return found


def _numbered(directory: Path, suffix: str) -> list[int]:
    """The N of every v<N>.<suffix> in `directory` (v1.initrd.img is not a v<N>.img)."""
    numbers = (p.name.removeprefix("v").removesuffix(f".{suffix}") for p in directory.glob(f"v*.{suffix}"))
    return sorted(int(n) for n in numbers if n.isdigit())


def _overlay_of(storage_object: str) -> tuple[str, str]:
    image, _, label = storage_object.removeprefix(STORAGE_OBJECT_PREFIX).partition(".")
    return image, label


def _device_problems(store: Path, overlays: set[tuple[str, str]]) -> list[str]:
    found = []
    listing = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True, check=True).stdout
    devices = [line.split()[0] for line in listing.splitlines() if line.startswith((STORAGE_OBJECT_PREFIX, POOL_PREFIX))]
    used_loops: set[str] = set()
    for device in devices:
        if not device.startswith(POOL_PREFIX) and _overlay_of(device) not in overlays:
            found.append(f"dm device {device}: its overlay is gone")
        deps = subprocess.run(["dmsetup", "deps", "-o", "devname", device], capture_output=True, text=True,
                              check=True).stdout
        used_loops.update(f"/dev/{loop}" for loop in re.findall(r"\((loop\d+)\)", deps))
    loops = subprocess.run(["losetup", "--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"],
                           capture_output=True, text=True, check=True).stdout
    for line in loops.splitlines():
        loop, _, backing = line.partition(" ")
        if backing.startswith(f"{store}/") and loop not in used_loops:
            found.append(f"loop device {loop} on {backing} is used by no overlay's device")
    return found


def _thin_problems(store: Path) -> list[str]:
    found = []
    owners: dict[str, list[str]] = {}
    for directory in [*(store / "overlays").glob("*/*"), *(store / "backups").glob("*/*/*")]:
        thin_id = directory / "thin-id"
        if not thin_id.is_file():
            found.append(f"{directory.relative_to(store)} names no thin volume")
            continue
        owners.setdefault(thin_id.read_text().strip(), []).append(str(directory.relative_to(store)))
        if directory.parent.parent.name == "overlays":
            device = f"{STORAGE_OBJECT_PREFIX}{directory.parent.name}.{directory.name}"
            table = subprocess.run(["dmsetup", "table", device], capture_output=True, text=True).stdout.split()
            if table and table[4] != thin_id.read_text().strip():
                found.append(f"dm device {device} maps thin volume {table[4]}, its overlay names {thin_id.read_text().strip()}")
    found += [f"thin volume {n} is named by {' and '.join(dirs)}" for n, dirs in owners.items() if len(dirs) > 1]
    return found


if __name__ == "__main__":
    store_arg, prefix_arg, backend_arg = sys.argv[1:]
    print(json.dumps(problems(Path(store_arg), prefix_arg, backend_arg)))
