"""GRUB's BIOS boot code written into a disk image file, as grub-bios-setup does on a device.

grub-install needs a block device (a loop device, where the image is a file), and a host without loop
devices can still build images. What it writes is small and documented in GRUB's source
(include/grub/i386/pc/boot.h, util/setup.c): the MBR's first 440 bytes are boot.img, told the sector of
core.img; core.img lies in the BIOS boot partition, its first sector (diskboot.img) told where the rest is.
"""

from __future__ import annotations

import struct

SECTOR = 512
MBR_CODE = 0x1B8  # boot code ends here: the disk signature and partition table follow, and are kept
KERNEL_SECTOR = 0x5C  # boot.img: 64-bit LBA of core.img's first sector
BOOT_DRIVE = 0x64  # boot.img: 0xff = the drive the BIOS booted from
DRIVE_CHECK = 0x66  # boot.img: a jmp that trusts the BIOS's drive number; nop'ed for hard disks
BLOCKLIST = SECTOR - 12  # diskboot.img: {start: u64, sectors: u16, segment: u16} of the rest of core.img
KERNEL_SEGMENT = 0x800  # where diskboot.img loads core.img (GRUB_BOOT_I386_PC_KERNEL_SEG)


class GrubImageError(ValueError):
    """boot.img or core.img is not what GRUB's i386-pc platform makes."""


def boot_sector(boot_img: bytes, core_lba: int) -> bytes:
    """The 440 bytes of MBR boot code that load core.img from sector `core_lba` of the boot disk."""
    if len(boot_img) != SECTOR or boot_img[-2:] != b"\x55\xaa":
        raise GrubImageError(f"boot.img must be one {SECTOR}-byte sector ending 55 aa")
    code = bytearray(boot_img[:MBR_CODE])
    struct.pack_into("<Q", code, KERNEL_SECTOR, core_lba)
    code[BOOT_DRIVE] = 0xFF
    # Some BIOSes pass drive 0 or 1 even when booting from 0x80; GRUB's setup nops the check for disks.
    code[DRIVE_CHECK:DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(code)


def placed_core(core_img: bytes, core_lba: int) -> bytes:
    """core.img with its first sector's blocklist naming the rest of it, which follows at `core_lba` + 1."""
    if len(core_img) < 2 * SECTOR:
        raise GrubImageError("core.img is shorter than two sectors")
    padded = bytearray(core_img + b"\0" * (-len(core_img) % SECTOR))
    rest = len(padded) // SECTOR - 1
    if rest > 0xFFFF:
        raise GrubImageError("core.img is too large for one blocklist")
    struct.pack_into("<QHH", padded, BLOCKLIST, core_lba + 1, rest, KERNEL_SEGMENT + (SECTOR >> 4))
    return bytes(padded)
