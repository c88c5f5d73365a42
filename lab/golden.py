"""A small bootable golden image for the lab's iPXE workstations, built in the lab VM (it has loop devices).

An MBR disk with one ext2 partition and EXTLINUX, all read through the BIOS disk calls that iPXE's sanboot
turns into iSCSI reads. It prints the file `mark.txt` on the serial console (SYSLINUX's DISPLAY) and waits
at SYSLINUX's `boot:` prompt, where the test types one of:

- `off`: power the workstation off;
- `show`: print mark.txt again, read from the disk now (cat.c32 is loaded only then): shows whether the
  workstation can still read its disk;
- `ibft`: boot the lab's Debian kernel with a busybox initramfs (lab/golden-init) that prints the iBFT
  iPXE left for the OS (initiator, target, portal, CHAP user), then powers off.

A test changes `mark.txt` in one user's overlay and sees it on that user's next boot only.
"""

from __future__ import annotations

from lab.vm import Lab

NO_MARK = "bootbroker golden image: no mark yet"
MODULES = "/usr/lib/syslinux/modules/bios"
SYSLINUX_CFG = """SERIAL 0 115200
PROMPT 1
TIMEOUT 0
DISPLAY mark.txt
DEFAULT off
LABEL off
  COM32 poweroff.c32
LABEL show
  COM32 cat.c32
  APPEND mark.txt
LABEL ibft
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0,115200 quiet panic=-1
"""

BUILD = f"""set -eu
img="$1" kernel="$2" initrd="$3"
rm -f "$img"
truncate -s 48M "$img"
printf 'label: dos\\n,,L,*\\n' | sfdisk -q "$img"
dev=$(losetup -fP --show "$img")
trap 'umount /mnt/golden 2>/dev/null || true; losetup -d "$dev"' EXIT
mkfs.ext2 -q "${{dev}}p1"
mkdir -p /mnt/golden
mount "${{dev}}p1" /mnt/golden
extlinux --install /mnt/golden >/dev/null
cp {MODULES}/poweroff.c32 {MODULES}/cat.c32 {MODULES}/libcom32.c32 {MODULES}/libutil.c32 /mnt/golden/
cp "$kernel" /mnt/golden/vmlinuz
cp "$initrd" /mnt/golden/initrd.gz
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
    """Build the golden image at `path` in the VM, with the kernel and golden initramfs of the lab's build."""
    assert lab.build is not None, "the lab is not started"
    lab.run(["sh", "-c", BUILD, "build-golden", path, str(lab.build.bzimage), str(lab.build.golden_initrd)],
            timeout=300)


def set_mark(lab: Lab, disk: str, mark: str) -> None:
    """Write `mark` into mark.txt of a disk image (an overlay's disk.img), while no client uses it."""
    lab.run(["sh", "-c", SET_MARK, "set-mark", disk, mark], timeout=120)


def shown_mark(screen: str) -> str:
    """The mark line the disk printed after the last SAN boot on a workstation's screen."""
    booted = screen[screen.rindex("Booting from SAN device 0x80"):]
    return next(line.strip() for line in booted.splitlines() if "mark" in line)
