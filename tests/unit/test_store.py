import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.shared.errors import BadIdentifier, Conflict, UnknownImage
from broker.helper.copies import copy_sparse, is_immutable, set_immutable, sha256_of
from broker.shared.files import write_atomically
from broker.helper.store import OverlayMeta, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store")
    (tmp_path / "store").mkdir()
    s.prepare()
    yield s
    for image in s.images.glob("*/v*.img"):  # published versions are immutable where the filesystem allows
        set_immutable(image, False)


def test_prepare_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Store(tmp_path / "absent").prepare()


def test_publish_makes_read_only_numbered_versions(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "golden.img"
    source.write_bytes(b"\1" * 4096)
    with pytest.raises(UnknownImage):
        store.current_version("demo")
    assert store.publish("demo", source)[0] == 1
    source.write_bytes(b"\2" * 4096)
    assert store.publish("demo", source)[0] == 2
    assert store.current_version("demo") == 2
    first = store.image_file("demo", 1)
    assert first.read_bytes() == b"\1" * 4096
    assert stat.S_IMODE(first.stat().st_mode) == 0o444
    assert store.checksum("demo", 1) == hashlib.sha256(b"\1" * 4096).hexdigest()
    if is_immutable(first):  # ext4, btrfs, XFS; not tmpfs
        with pytest.raises(PermissionError):
            first.unlink()
    assert not list(store.tmp.iterdir())


@pytest.mark.parametrize("size", [0, 1000])
def test_publish_refuses_files_that_are_not_disks(store: Store, tmp_path: Path, size: int) -> None:
    source = tmp_path / "odd.img"
    source.write_bytes(b"x" * size)
    with pytest.raises(BadIdentifier, match="multiple of 512"):
        store.publish("demo", source)


def test_an_overlay_label_belongs_to_one_user(store: Store) -> None:
    work = store.new_overlay_workdir("demo", "alice")
    overlay = store.commit_overlay(work, OverlayMeta("alice", "demo", 1, 0.0), "alice")
    assert store.claim_overlay_dir("demo", "alice", "alice") == overlay
    with pytest.raises(Conflict):
        store.claim_overlay_dir("demo", "alice", "ALICE")
    assert store.list_overlays() == [(overlay, OverlayMeta("alice", "demo", 1, 0.0))]


def test_backups_never_overwrite_each_other(store: Store) -> None:
    names = []
    for n in range(3):
        work = store.new_overlay_workdir("demo", "bob")
        (work / "disk.img").write_bytes(bytes([n]))
        overlay = store.commit_overlay(work, OverlayMeta("bob", "demo", 1, 0.0), "bob")
        names.append(store.move_to_backup(overlay, "demo", "bob"))
    assert len(set(names)) == 3
    assert sorted((b / "disk.img").read_bytes() for b in names) == [b"\0", b"\1", b"\2"]


def test_write_atomically_sets_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomically(target, b"one", 0o600)
    write_atomically(target, b"two", 0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def publish_versions(store: Store, tmp_path: Path, image: str, count: int) -> None:
    source = tmp_path / "golden.img"
    for n in range(count):
        source.write_bytes(bytes([n]) * 4096)
        store.publish(image, source)


def overlay(store: Store, image: str, user: str, version: int) -> Path:
    return store.commit_overlay(store.new_overlay_workdir(image, user), OverlayMeta(user, image, version, 0.0), user)


def test_retire_refuses_the_current_version_and_versions_still_in_use(store: Store, tmp_path: Path) -> None:
    publish_versions(store, tmp_path, "demo", 3)
    alice = overlay(store, "demo", "alice", 1)
    overlay(store, "demo", "bob", 2)
    store.move_to_backup(overlay(store, "demo", "carol", 2), "demo", "carol")
    assert store.pins() == {("demo", 1): (1, 0), ("demo", 2): (1, 1)}
    with pytest.raises(Conflict, match="current version"):
        store.retire("demo", 3)
    with pytest.raises(Conflict, match=r"v1: 1 overlays, 0 backups\) by alice"):
        store.retire("demo", 1)
    with pytest.raises(Conflict, match=r"v2: 1 overlays, 1 backups\) by bob, carol"):
        store.retire("demo", 2)
    with pytest.raises(Conflict, match="v1: .*v2: "):
        store.retire("demo", None)
    with pytest.raises(UnknownImage, match="no version 7; it has v1, v2, v3"):
        store.retire("demo", 7)
    assert store.versions("demo") == [1, 2, 3]  # nothing deleted by a refusal
    store.move_to_backup(alice, "demo", "alice")
    shutil.rmtree(store.backups / "demo" / "alice")  # the backup expired
    assert store.retire("demo", 1) == [1]
    assert store.versions("demo") == [2, 3] and store.current_version("demo") == 3


def test_retiring_a_whole_image_removes_every_version_and_current(store: Store, tmp_path: Path) -> None:
    publish_versions(store, tmp_path, "demo", 2)
    assert store.retire("demo", None) == [1, 2]
    assert store.versions("demo") == []
    with pytest.raises(UnknownImage, match="no published version"):
        store.current_version("demo")
    with pytest.raises(UnknownImage, match="no published version"):
        store.retire("demo", None)


def test_a_backup_goes_back_into_place_but_never_over_an_overlay(store: Store) -> None:
    first = store.move_to_backup(overlay(store, "demo", "dora", 1), "demo", "dora")
    second = store.move_to_backup(overlay(store, "demo", "dora", 1), "demo", "dora")
    assert store.backups_of("demo", "dora") == sorted([first, second])
    assert store.backup_dir("demo", "dora", first.name) == first
    current = overlay(store, "demo", "dora", 1)
    with pytest.raises(OSError):
        store.restore_backup(first, "demo", "dora")
    assert store.read_meta(current) is not None and first.is_dir()  # both untouched
    shutil.rmtree(current)
    assert store.restore_backup(first, "demo", "dora") == current
    assert store.backups_of("demo", "dora") == [second]


def test_backups_expire_by_the_time_they_were_set_aside(store: Store) -> None:
    old, new = (store.backups / "demo" / "erin" / name for name in ("20260101T000000", "20260301T000000.2"))
    for backup in (old, new):
        backup.mkdir(parents=True)
        write_atomically(backup / "meta.json", b'{"user": "erin", "image": "demo", "version": 1, "created": 0}', 0o600)
    march_15 = 1773532800.0  # 2026-03-15T00:00:00Z
    assert store.expired_backups(30, march_15) == [old]
    assert store.expired_backups(80, march_15) == []
    assert store.expired_backups(10, march_15) == [old, new]


def test_sha256_of_a_sparse_file_hashes_its_holes_as_zeros(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.img"
    with open(sparse, "wb") as f:
        f.seek(3 << 20)
        f.write(b"data in the middle")
        f.truncate(8 << 20)  # a hole at the end too
    content = bytes(3 << 20) + b"data in the middle" + bytes((8 << 20) - (3 << 20) - 18)
    assert sha256_of(sparse) == hashlib.sha256(content).hexdigest()
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    assert sha256_of(empty) == hashlib.sha256(b"").hexdigest()


def test_copy_sparse_keeps_the_content_and_leaves_zeros_as_holes(tmp_path: Path) -> None:
    source = tmp_path / "disk.raw"
    content = b"\x55" * 4096 + bytes(4 << 20) + b"end"
    source.write_bytes(content + bytes(509))  # 512-byte multiple; zeros at the end
    copy = tmp_path / "copy.img"
    copy_sparse(source, copy, source.stat().st_size)
    assert copy.read_bytes() == source.read_bytes()
    assert copy.stat().st_blocks * 512 < 2 << 20  # the 4 MiB of zeros are a hole
    with pytest.raises(FileExistsError):
        copy_sparse(source, copy, source.stat().st_size)  # never over an existing file
    with pytest.raises(OSError, match="ended at byte"):
        copy_sparse(source, tmp_path / "longer.img", source.stat().st_size + 512)


def test_an_interrupted_publish_is_discarded_and_the_next_one_takes_its_number(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "golden.img"
    source.write_bytes(b"\1" * 4096)
    store.publish("demo", source)
    # A publish that marked and numbered v2 and wrote its checksum, then died before making it current;
    # and one that died after writing v3's mark and checksum only.
    staged = store.stage_version("demo", lambda tmp: shutil.copyfile(source, tmp))
    (store.images / "demo" / "v2.publishing").touch()
    os.rename(staged, store.image_file("demo", 2))
    store.checksum_file("demo", 2).write_text("0" * 64 + "  v2.img\n")
    (store.images / "demo" / "v3.publishing").touch()
    store.checksum_file("demo", 3).write_text("0" * 64 + "  v3.img\n")
    assert store.discard_unfinished("demo") == [2]
    assert store.versions("demo") == [1] and store.current_version("demo") == 1
    assert sorted(p.name for p in (store.images / "demo").iterdir()) == ["current", "v1.img", "v1.sha256"]
    assert store.publish("demo", source)[0] == 2
    assert store.discard_unfinished("demo") == []
    assert store.discard_unfinished("never-published") == []


def test_a_first_publish_that_died_before_current_is_discarded_but_a_finished_one_is_kept(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "golden.img"
    source.write_bytes(b"\1" * 4096)
    store.publish("demo", source)
    (store.images / "demo" / "current").unlink()  # current lost by hand: v1 finished all the same
    assert store.discard_unfinished("demo") == [] and store.versions("demo") == [1]
    store.publish("other", source)
    (store.images / "other" / "current").unlink()
    (store.images / "other" / "v1.publishing").touch()  # the first publish died before writing current
    assert store.discard_unfinished("other") == [1]
    assert not list((store.images / "other").iterdir())


def test_a_copy_from_another_filesystem_keeps_holes(tmp_path: Path) -> None:
    """copy_file_range refuses to cross filesystems (EXDEV): tmpfs to the store is what a publish of a
    freshly built image often is."""
    from broker.helper.copies import clone_or_copy

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    source = shm / f"bootbroker-test-{os.getpid()}.img"
    try:
        with open(source, "wb") as f:
            f.write(b"\5" * 8192)
            f.truncate(16 << 20)
        copy = tmp_path / "copy.img"
        clone_or_copy(source, copy)
        assert copy.read_bytes() == source.read_bytes() and copy.stat().st_blocks * 512 < 1 << 20
    finally:
        source.unlink(missing_ok=True)
