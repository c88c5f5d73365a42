"""A small bootable golden image for the lab's iPXE workstations, built in the lab VM (it has loop devices).

An MBR disk with one ext2 partition and EXTLINUX: it prints the file `mark.txt` on the serial console
(SYSLINUX's DISPLAY, read through the BIOS disk calls that iPXE's sanboot turns into iSCSI reads) and then
powers the workstation off. A test changes `mark.txt` in one user's overlay and sees it on that user's
next boot only.
"""

from __future__ import annotations

from lab.vm import Lab

NO_MARK = "bootbroker golden image: no mark yet"
MODULES = "/usr/lib/syslinux/modules/bios"
SYSLINUX_CFG = f"""SERIAL 0 115200
PROMPT 0
TIMEOUT 1
DISPLAY mark.txt
DEFAULT off
LABEL off
  COM32 poweroff.c32
"""

BUILD = f"""set -eu
img="$1"
rm -f "$img"
truncate -s 32M "$img"
printf 'label: dos\\n,,L,*\\n' | sfdisk -q "$img"
dev=$(losetup -fP --show "$img")
trap 'umount /mnt/golden 2>/dev/null || true; losetup -d "$dev"' EXIT
mkfs.ext2 -q "${{dev}}p1"
mkdir -p /mnt/golden
mount "${{dev}}p1" /mnt/golden
extlinux --install /mnt/golden >/dev/null
cp {MODULES}/poweroff.c32 {MODULES}/libcom32.c32 {MODULES}/libutil.c32 /mnt/golden/
cat > /mnt/golden/syslinux.cfg <<'CFG'
{SYSLINUX_CFG}CFG
echo '{NO_MARK}' > /mnt/golden/mark.txt
umount /mnt/golden
dd if=/usr/lib/EXTLINUX/mbr.bin of="$img" bs=440 count=1 conv=notrunc status=none
"""

SET_MARK = """set -eu
dev=$(losetup -fP --show "$1")
trap 'umount /mnt/mark 2>/dev/null || true; losetup -d "$dev"' EXIT
mkdir -p /mnt/mark
mount "${dev}p1" /mnt/mark
printf '%s\\n' "$2" > /mnt/mark/mark.txt
umount /mnt/mark
"""


def build(lab: Lab, path: str) -> None:
    lab.run(["sh", "-c", BUILD, "build-golden", path], timeout=300)


def set_mark(lab: Lab, disk: str, mark: str) -> None:
    """Write `mark` into mark.txt of a disk image (an overlay's disk.img), while no client uses it."""
    lab.run(["sh", "-c", SET_MARK, "set-mark", disk, mark], timeout=120)
