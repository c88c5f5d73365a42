import os
import stat
from pathlib import Path

import pytest

from broker.errors import BadIdentifier, Conflict, UnknownImage
from broker.files import write_atomically
from broker.store import OverlayMeta, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    (tmp_path / "store").mkdir()
    s.prepare()
    return s


def test_prepare_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Store(tmp_path / "absent").prepare()


def test_publish_makes_read_only_numbered_versions(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "golden.img"
    source.write_bytes(b"\1" * 4096)
    with pytest.raises(UnknownImage):
        store.current_version("demo")
    assert store.publish("demo", source) == 1
    source.write_bytes(b"\2" * 4096)
    assert store.publish("demo", source) == 2
    assert store.current_version("demo") == 2
    first = store.image_file("demo", 1)
    assert first.read_bytes() == b"\1" * 4096
    assert stat.S_IMODE(first.stat().st_mode) == 0o444
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
