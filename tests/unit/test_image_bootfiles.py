"""A version's own kernel and initrd read out of small synthetic disk images made here without loop
devices or mounts (sfdisk on a file, mke2fs -d at an offset): Debian's links (relative, absolute, in
/boot), the newest /boot/vmlinuz-* with its initrd, a separate /boot, an MBR disk; and what finds nothing,
saying what it looked for: a loop of links, a missing initrd, a non-ext filesystem, no partition table."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from broker.images.bootfiles import BootFiles, NotFound, extract

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("sfdisk", "debugfs", "mke2fs")), reason="needs fdisk and e2fsprogs",
)

MIB = 2**20
START = 1 * MIB
DISK_SIZE = 12 * MIB
LINUX_GPT = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ROOT_UUID = "3c5ae0b5-2b7e-4a0a-9c43-3b8f0c7f5a11"
BOOT_UUID = "9a1e6d1c-43d5-4c57-9d1b-0e0f6f1a2b3c"
K = "6.1.0-18-amd64"
KERNEL_BYTES = b"bzImage " + os.urandom(3000)
INITRD_BYTES = b"070701" + os.urandom(5000)


def run(*argv: str, data: bytes | None = None) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, input=data)


def tree(base: Path, files: dict[str, bytes], links: dict[str, str], fstab: str | None = f"UUID={ROOT_UUID} / ext4 defaults 0 1\n") -> Path:
    root = base / "tree"
    root.mkdir()
    if fstab is not None:
        files = {"etc/fstab": fstab.encode(), **files}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)
    return root


def disk(base: Path, *trees: Path, label: str = "gpt", uuids: tuple[str, ...] = (ROOT_UUID, BOOT_UUID)) -> Path:
    """A disk with one ext4 partition per tree (5 MiB each), GPT or MBR (dos)."""
    image = base / "disk.img"
    image.touch()
    os.truncate(image, DISK_SIZE)
    size = 5 * MIB
    kind = LINUX_GPT if label == "gpt" else "83"
    rows = "".join(f"start={(START + n * size) // 512}, size={size // 512}, type={kind}\n" for n in range(len(trees)))
    run("sfdisk", "--quiet", str(image), data=f"label: {label}\n{rows}".encode())
    for n, root in enumerate(trees):
        run("mke2fs", "-q", "-F", "-t", "ext4", "-U", uuids[n], "-d", str(root), "-E", f"offset={START + n * size}",
            str(image), f"{size // 1024}k")
    return image


# A newer kernel in /boot than the links name: what the links name is what boots, so it must win (and a
# test that passes by the fallback to the newest kernel in /boot would fail here).
NEWER = {"boot/vmlinuz-6.1.0-99-amd64": b"not the default", "boot/initrd.img-6.1.0-99-amd64": b"not the default"}


def debian(base: Path, **links: str) -> Path:
    """Debian's /boot, with its links at the root: relative unless `links` says otherwise."""
    return tree(base, {f"boot/vmlinuz-{K}": KERNEL_BYTES, f"boot/initrd.img-{K}": INITRD_BYTES, **NEWER},
                {"vmlinuz": f"boot/vmlinuz-{K}", "initrd.img": f"boot/initrd.img-{K}", **links})


def extracted(image: Path, base: Path) -> BootFiles:
    work = base / "work"
    work.mkdir()
    return extract(image, work)


def assert_read(found: BootFiles, kernel: str = f"/boot/vmlinuz-{K}", initrd: str = f"/boot/initrd.img-{K}") -> None:
    assert (found.kernel, found.initrd) == (kernel, initrd)
    assert found.path("vmlinuz").read_bytes() == KERNEL_BYTES
    assert found.path("initrd.img").read_bytes() == INITRD_BYTES


def test_debians_relative_links_at_the_root(tmp_path: Path) -> None:
    assert_read(extracted(disk(tmp_path, debian(tmp_path)), tmp_path))


def test_absolute_links_are_followed_from_the_images_root_not_the_hosts(tmp_path: Path) -> None:
    root = debian(tmp_path, vmlinuz=f"/boot/vmlinuz-{K}", **{"initrd.img": f"/boot/initrd.img-{K}"})
    assert_read(extracted(disk(tmp_path, root), tmp_path))


def test_links_through_links_and_dot_dot(tmp_path: Path) -> None:
    root = tree(tmp_path, {f"boot/vmlinuz-{K}": KERNEL_BYTES, f"boot/initrd.img-{K}": INITRD_BYTES, **NEWER},
                {"vmlinuz": "boot/vmlinuz", "boot/vmlinuz": f"../boot/./vmlinuz-{K}",
                 "initrd.img": "/boot/initrd.img", "boot/initrd.img": f"initrd.img-{K}"})
    assert_read(extracted(disk(tmp_path, root), tmp_path))


def test_links_in_boot_only(tmp_path: Path) -> None:
    root = tree(tmp_path, {f"boot/vmlinuz-{K}": KERNEL_BYTES, f"boot/initrd.img-{K}": INITRD_BYTES, **NEWER},
                {"boot/vmlinuz": f"vmlinuz-{K}", "boot/initrd.img": f"initrd.img-{K}"})
    assert_read(extracted(disk(tmp_path, root), tmp_path))


def test_without_links_the_newest_kernel_by_version_with_its_initrd(tmp_path: Path) -> None:
    # 6.1.0-18 is newer than 6.1.0-9, which sorts after it as text.
    root = tree(tmp_path, {
        "boot/vmlinuz-6.1.0-9-amd64": b"old", "boot/initrd.img-6.1.0-9-amd64": b"old",
        f"boot/vmlinuz-{K}": KERNEL_BYTES, f"boot/initrd.img-{K}": INITRD_BYTES,
    }, {})
    assert_read(extracted(disk(tmp_path, root), tmp_path))


def test_fedoras_initramfs_and_its_rescue_kernel(tmp_path: Path) -> None:
    fedora = "6.8.5-301.fc40.x86_64"
    rescue = "0-rescue-0123456789abcdef"
    root = tree(tmp_path, {
        f"boot/vmlinuz-{rescue}": b"rescue", f"boot/initramfs-{rescue}.img": b"rescue",
        f"boot/vmlinuz-{fedora}": KERNEL_BYTES, f"boot/initramfs-{fedora}.img": INITRD_BYTES,
    }, {})
    assert_read(extracted(disk(tmp_path, root), tmp_path), f"/boot/vmlinuz-{fedora}", f"/boot/initramfs-{fedora}.img")


def test_the_newest_kernel_without_its_initrd_gives_way_to_an_older_one_with_it(tmp_path: Path) -> None:
    root = tree(tmp_path, {"boot/vmlinuz-6.1.0-99-amd64": b"no initrd",
                           f"boot/vmlinuz-{K}": KERNEL_BYTES, f"boot/initrd.img-{K}": INITRD_BYTES}, {})
    assert_read(extracted(disk(tmp_path, root), tmp_path))


def test_a_loop_of_links_ends_and_the_kernel_in_boot_is_found_instead(tmp_path: Path) -> None:
    root = tree(tmp_path, {f"boot/vmlinuz-{K}": KERNEL_BYTES, f"boot/initrd.img-{K}": INITRD_BYTES},
                {"vmlinuz": "vmlinuz.old", "vmlinuz.old": "/vmlinuz", "initrd.img": "initrd.img"})
    assert_read(extracted(disk(tmp_path, root), tmp_path))


def test_a_loop_of_links_and_nothing_else_finds_nothing(tmp_path: Path) -> None:
    root = tree(tmp_path, {}, {"vmlinuz": "vmlinuz.old", "vmlinuz.old": "/vmlinuz", "initrd.img": "initrd.img"})
    with pytest.raises(NotFound, match="no kernel and initrd: looked for /vmlinuz and /initrd.img.*ext4 root on partition 1"):
        extracted(disk(tmp_path, root), tmp_path)


def test_a_missing_initrd_finds_nothing_and_says_which_initrd_it_wanted(tmp_path: Path) -> None:
    root = tree(tmp_path, {f"boot/vmlinuz-{K}": KERNEL_BYTES}, {"vmlinuz": f"boot/vmlinuz-{K}", "initrd.img": f"boot/initrd.img-{K}"})
    with pytest.raises(NotFound) as caught:
        extracted(disk(tmp_path, root), tmp_path)
    assert f"/boot/vmlinuz-{K} has no initrd.img-{K} or initramfs-{K}.img beside it" in str(caught.value)
    assert "/boot/initrd.img-RELEASE" in str(caught.value)


def test_a_dangling_link_is_not_a_kernel(tmp_path: Path) -> None:
    root = tree(tmp_path, {f"boot/initrd.img-{K}": INITRD_BYTES}, {"vmlinuz": f"boot/vmlinuz-{K}", "initrd.img": f"boot/initrd.img-{K}"})
    with pytest.raises(NotFound, match="no kernel and initrd"):
        extracted(disk(tmp_path, root), tmp_path)


def test_an_mbr_disk(tmp_path: Path) -> None:
    assert_read(extracted(disk(tmp_path, debian(tmp_path), label="dos"), tmp_path))


def test_a_separate_boot_filesystem_named_by_the_roots_fstab(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "b").mkdir()
    root = tree(tmp_path / "r", {"boot/.keep": b""}, {"vmlinuz": f"boot/vmlinuz-{K}", "initrd.img": f"boot/initrd.img-{K}"},
                fstab=f"UUID={ROOT_UUID} / ext4 defaults 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n")
    boot = tree(tmp_path / "b", {f"vmlinuz-{K}": KERNEL_BYTES, f"initrd.img-{K}": INITRD_BYTES}, {}, fstab=None)
    assert_read(extracted(disk(tmp_path, root, boot), tmp_path))


def test_a_boot_filesystem_beside_a_root_this_cannot_read(tmp_path: Path) -> None:
    """An XFS root with an ext4 /boot: the kernel is read from the /boot filesystem, as at its top."""
    (tmp_path / "r").mkdir()
    (tmp_path / "b").mkdir()
    boot = tree(tmp_path / "b", {f"vmlinuz-{K}": KERNEL_BYTES, f"initrd.img-{K}": INITRD_BYTES}, {}, fstab=None)
    image = disk(tmp_path, boot, tree(tmp_path / "r", {}, {}))
    with image.open("r+b") as f:  # the second partition: XFS's superblock magic, not ext4
        f.seek(START + 5 * MIB)
        f.write(b"XFSB" + bytes(4092))
    found = extracted(image, tmp_path)
    assert (found.kernel, found.path("vmlinuz").read_bytes()) == (f"/vmlinuz-{K}", KERNEL_BYTES)


def test_a_non_ext_partition_finds_nothing_and_names_what_it_holds(tmp_path: Path) -> None:
    image = disk(tmp_path, debian(tmp_path))
    with image.open("r+b") as f:  # XFS's superblock magic where the ext4 filesystem was
        f.seek(START)
        f.write(b"XFSB" + bytes(4092))
    with pytest.raises(NotFound, match=r"no ext2/3/4 filesystem to look in \(partition 1 holds XFS\)"):
        extracted(image, tmp_path)


def test_random_bytes_have_no_partition_table(tmp_path: Path) -> None:
    image = tmp_path / "random.img"
    image.write_bytes(os.urandom(MIB))
    with pytest.raises(NotFound, match="no partition table"):
        extracted(image, tmp_path)


def test_a_name_with_a_quote_is_never_put_in_a_debugfs_request(tmp_path: Path) -> None:
    # Such a name could end the quoted path and give debugfs another file to write to.
    evil = f'vmlinuz-{K}" "x'
    root = tree(tmp_path, {f"boot/{evil}": KERNEL_BYTES, f"boot/initrd.img-{K}": INITRD_BYTES}, {})
    with pytest.raises(NotFound, match="a name debugfs is not asked for"):
        extracted(disk(tmp_path, root), tmp_path)
