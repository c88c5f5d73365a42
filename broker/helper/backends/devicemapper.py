"""What the device-mapper backends (dm-thin, dm-snapshot) share: asking whether a device exists, making
and removing devices without udev, loop devices, and reading an overlay's whole disk."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...shared.errors import BackendFailure
from ..copies import copy_sparse
from . import Backend, run_tool

MAPPER = Path("/dev/mapper")


def exists(name: str, uuid: str | None = None) -> bool:
    """Whether device-mapper has a device `name` (with `uuid`, when given: ours, not one another store or
    program left under the same name). Every login asks (attach, fill level): the common case, its
    /dev/mapper node naming a live dm device of that name, costs a stat and a sysfs read or two; a missing or
    stale node (no udev here) falls back to asking dmsetup."""
    try:
        node = os.stat(MAPPER / name)
        live = Path(f"/sys/dev/block/{os.major(node.st_rdev)}:{os.minor(node.st_rdev)}/dm")
        if (live / "name").read_text().strip() == name:
            return uuid is None or (live / "uuid").read_text().strip() == uuid
    except OSError:
        pass
    try:
        found = run_tool(["dmsetup", "info", "-c", "--noheadings", "-o", "uuid", name]).strip()
    except BackendFailure:
        return False
    return uuid is None or found == uuid


def create(name: str, table: str, uuid: str | None = None) -> Path:
    """Make the dm device `name` with `table` (and `uuid`) and its /dev/mapper node (no udev in many helper
    environments); on failure nothing of it is left."""
    try:
        run_tool(["dmsetup", "create", name, "--table", table, *(["--uuid", uuid] if uuid else [])])
        run_tool(["dmsetup", "mknodes", name])
    except BackendFailure:
        if exists(name):
            run_tool(["dmsetup", "remove", name])
        raise
    return MAPPER / name


def remove(name: str) -> list[str]:
    """Remove the dm device `name` and its node; returns the loop devices it used (/dev/loopN)."""
    deps = run_tool(["dmsetup", "deps", "-o", "devname", name])
    run_tool(["dmsetup", "remove", name])
    run_tool(["dmsetup", "mknodes"])
    return [f"/dev/{loop}" for loop in re.findall(r"\((loop\d+)\)", deps)]


def require_target(target: str, module: str) -> None:
    if target not in run_tool(["dmsetup", "targets"]).split():
        raise BackendFailure(f"the kernel has no {target} target; load the {module} module")


def probe_loop(scratch: Path) -> None:
    """Fail clearly when loop devices cannot be made."""
    probe = scratch / "probe-loop"
    try:
        with open(probe, "wb") as f:
            f.truncate(1024 * 1024)
        loop = run_tool(["losetup", "--find", "--show", str(probe)]).strip()
        run_tool(["losetup", "--detach", loop])
    except BackendFailure as e:
        raise BackendFailure(f"loop devices do not work here ({e.message}); load the loop module") from None
    finally:
        probe.unlink(missing_ok=True)


def new_loop(path: Path, *options: str) -> str:
    return run_tool(["losetup", "--find", "--show", *options, str(path)]).strip()


def loop_for(path: Path, *, read_only: bool, direct_io: bool) -> str:
    """A loop device of `path` with these settings: the one attached already (by an earlier start, or for
    another overlay), else a new one."""
    listed = run_tool(["losetup", "--list", "--noheadings", "--raw", "--output", "NAME,RO,DIO", "--associated", str(path)])
    wanted = (str(int(read_only)), str(int(direct_io)))
    for line in listed.splitlines():
        loop, *flags = line.split()
        if tuple(flags) == wanted:
            return loop
    return new_loop(path, *(["--read-only"] if read_only else []), *(["--direct-io=on"] if direct_io else []))


def detach_loop(loop: str) -> None:
    run_tool(["losetup", "--detach", loop])


def materialize(backend: Backend, golden: Path, overlay: Path, name: str, destination: Path) -> None:
    """Copy the overlay's whole disk (its dm device `name`, attached for the copy if it was not) to the new
    sparse file `destination`."""
    was_attached = exists(name)
    device = backend.attach(golden, overlay, name)
    try:
        copy_sparse(device, destination, golden.stat().st_size)
    except OSError as e:
        raise BackendFailure(f"cannot read the overlay's disk {device}: {e.strerror or e}") from None
    finally:
        if not was_attached:
            backend.detach(overlay, name)
