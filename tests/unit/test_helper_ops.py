"""The helper's use cases (broker/helper/) on a real store in a temporary directory, with an in-memory LIO
that fails where a test says (tests/unit/helperfakes.py): what the helper decides when a step fails, what
start-up keeps and sets aside. The lab tests prove the same operations against the kernel's LIO."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.helper import store as store_module
from broker.shared.config import BackendKind
from broker.shared.errors import BackendFailure, BadIdentifier, BrokerError, Conflict, StoreFull, UnknownImage
from broker.helper.copies import set_immutable
from broker.helper.operations import Helper

from .helperfakes import FakeLio, make_helper

TARGET = "iqn.2026-11.org.example.lab:demo.alice"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "store"
    for image in (tmp_path / "store" / "images").glob("*/v*.img"):
        set_immutable(image, False)


def golden(tmp_path: Path, fill: bytes) -> Path:
    path = tmp_path / f"golden-{fill.hex()}.img"
    path.write_bytes(fill * 4096)
    return path


@pytest.fixture
def lio() -> FakeLio:
    return FakeLio()


@pytest.fixture
def helper(root: Path, lio: FakeLio, tmp_path: Path) -> Helper:
    helper = make_helper(root, lio)
    helper.start()
    helper.publish("demo", str(golden(tmp_path, b"\1")))
    return helper


def restarted(helper: Helper) -> Helper:
    """A new helper process on the same store and the same kernel."""
    again = Helper(helper.config, helper.backend, helper.lio, helper.directory)
    again.start()
    return again


# A failed login leaves at most one NodeACL, and the records say which (issue 15, defect 3)

def test_a_login_whose_previous_acl_cannot_be_dropped_leaves_one_writer_and_the_next_login_cleans_up(
    helper: Helper, lio: FakeLio,
) -> None:
    first = helper.ensure_session("demo", "alice")
    lio.logged_in_initiators.add(first["initiator_iqn"])
    lio.fail = {"delete_acl"}
    with pytest.raises(BackendFailure):
        helper.ensure_session("demo", "alice")
    # The first workstation's ACL is still there (LIO would not drop it): the record must say so.
    assert set(lio.targets[TARGET].acls) == {first["initiator_iqn"]}
    recorded = helper.book.get("demo", "alice")
    assert recorded is not None and recorded.initiator == first["initiator_iqn"]
    third = helper.ensure_session("demo", "alice")
    assert set(lio.targets[TARGET].acls) - lio.targets[TARGET].fences == {third["initiator_iqn"]}
    assert restarted(helper).book.get("demo", "alice").initiator == third["initiator_iqn"]  # type: ignore[union-attr]


def test_a_login_removes_every_acl_on_its_target_but_its_own(helper: Helper, lio: FakeLio) -> None:
    helper.ensure_session("demo", "alice")
    lio.targets[TARGET].acls["iqn.2026-11.org.example.lab:stray"] = ("alice", "x" * 20)  # no record knows it
    grant = helper.ensure_session("demo", "alice")
    assert set(lio.targets[TARGET].acls) - lio.targets[TARGET].fences == {grant["initiator_iqn"]}
    assert "iqn.2026-11.org.example.lab:stray" not in lio.targets[TARGET].acls


# A taken-over workstation is fenced: it logs in again to a NodeACL that maps no LUN (issue 16)

def test_a_takeover_fences_the_previous_workstation_with_its_own_credentials(helper: Helper, lio: FakeLio) -> None:
    first = helper.ensure_session("demo", "alice")
    second = helper.ensure_session("demo", "alice")
    target = lio.targets[TARGET]
    assert target.acls[first["initiator_iqn"]] == (first["chap_user"], first["chap_secret"])
    assert target.fences == {first["initiator_iqn"]}
    assert lio.serves(TARGET, second["initiator_iqn"]) and not lio.serves(TARGET, first["initiator_iqn"])
    # One fence per target: the next takeover fences the second workstation and drops the first's fence.
    third = helper.ensure_session("demo", "alice")
    assert set(target.acls) == {third["initiator_iqn"], second["initiator_iqn"]}
    assert target.fences == {second["initiator_iqn"]}


def test_a_fence_lio_refuses_does_not_fail_the_takeover(
    helper: Helper, lio: FakeLio, caplog: pytest.LogCaptureFixture,
) -> None:
    first = helper.ensure_session("demo", "alice")
    lio.fail = {"fence"}
    second = helper.ensure_session("demo", "alice")
    assert set(lio.targets[TARGET].acls) == {second["initiator_iqn"]}
    assert helper.book.get("demo", "alice").initiator == second["initiator_iqn"]  # type: ignore[union-attr]
    assert "could not fence the previous workstation of alice on demo" in caplog.text
    assert first["chap_secret"] not in caplog.text and second["chap_secret"] not in caplog.text


def test_start_up_keeps_a_fence_and_removes_an_acl_no_session_has(helper: Helper, lio: FakeLio) -> None:
    first = helper.ensure_session("demo", "alice")
    second = helper.ensure_session("demo", "alice")
    lio.targets[TARGET].acls["iqn.2026-11.org.example.lab:stray"] = ("alice", "x" * 20)  # maps the LUN
    restarted(helper)
    assert set(lio.targets[TARGET].acls) == {first["initiator_iqn"], second["initiator_iqn"]}
    assert lio.targets[TARGET].fences == {first["initiator_iqn"]}


def test_the_first_login_and_a_login_after_end_session_fence_nobody(helper: Helper, lio: FakeLio) -> None:
    helper.ensure_session("demo", "alice")
    assert lio.targets[TARGET].fences == set()
    helper.end_session("demo", "alice")
    helper.ensure_session("demo", "alice")
    assert lio.targets[TARGET].fences == set()


def test_a_login_whose_new_acl_fails_leaves_no_acl_and_no_record(helper: Helper, lio: FakeLio) -> None:
    helper.ensure_session("demo", "alice")
    lio.fail = {"ensure_acl"}
    with pytest.raises(BackendFailure):
        helper.ensure_session("demo", "alice")
    assert lio.targets[TARGET].acls == {}
    assert helper.book.get("demo", "alice") is None


# Start-up discards only what a publish left half-done (issue 15, defect 2)

def test_start_up_keeps_a_version_newer_than_current_that_overlays_use(helper: Helper, tmp_path: Path) -> None:
    helper.publish("demo", str(golden(tmp_path, b"\2")))
    helper.ensure_session("demo", "alice")  # alice's overlay is made from v2
    (helper.store.images / "demo" / "current").write_text("1\n")  # an admin points current back by hand
    again = restarted(helper)
    assert again.store.versions("demo") == [1, 2]
    assert again.store.image_file("demo", 2).read_bytes() == b"\2" * 4096


def test_start_up_keeps_every_finished_version_when_current_is_missing(helper: Helper, tmp_path: Path) -> None:
    helper.publish("demo", str(golden(tmp_path, b"\2")))
    (helper.store.images / "demo" / "current").unlink()
    assert restarted(helper).store.versions("demo") == [1, 2]


def test_start_up_discards_a_publish_interrupted_before_it_became_current(
    helper: Helper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(point: str) -> None:
        if point == "publish-renamed":
            raise KeyboardInterrupt  # stands for the process dying there
    monkeypatch.setattr(store_module, "crash_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        helper.publish("demo", str(golden(tmp_path, b"\2")))
    monkeypatch.undo()
    again = restarted(helper)
    assert again.store.versions("demo") == [1] and again.store.current_version("demo") == 1
    assert not list((again.store.images / "demo").glob("v2*"))
    assert again.publish("demo", str(golden(tmp_path, b"\3")))["version"] == 2


def test_an_admin_makes_an_older_version_current_again(helper: Helper, tmp_path: Path) -> None:
    helper.publish("demo", str(golden(tmp_path, b"\2")))
    assert helper.set_current("demo", 1) == {"image": "demo", "current": 1, "previous": 2}
    assert helper.store.current_version("demo") == 1
    helper.ensure_session("demo", "alice")
    assert helper.store.read_meta(helper.store.overlay_dir("demo", "alice")).version == 1  # type: ignore[union-attr]
    assert restarted(helper).store.versions("demo") == [1, 2]
    with pytest.raises(UnknownImage, match="no version 7"):
        helper.set_current("demo", 7)


# One unreadable record does not stop the helper (issue 15, defect 4)

def test_a_session_of_an_image_no_longer_configured_is_set_aside_and_everyone_else_is_served(
    root: Path, lio: FakeLio, tmp_path: Path,
) -> None:
    both = {"demo": {"description": "Demo", "users": ["*"]}, "old": {"description": "Old", "users": ["*"]}}
    helper = make_helper(root, lio, **both)
    helper.start()
    for image in both:
        helper.publish(image, str(golden(tmp_path, b"\1")))
    helper.ensure_session("old", "bob")
    alice = helper.ensure_session("demo", "alice")
    again = make_helper(root, lio)  # [images.old] removed from the configuration
    again.start()
    assert again.book.get("demo", "alice").chap_secret == alice["chap_secret"]  # type: ignore[union-attr]
    assert lio.targets[TARGET].acls.keys() == {alice["initiator_iqn"]}
    (note,) = again.health()["set_aside"]
    assert "old.bob.json" in note and "old" in note
    assert (root / "overlays" / "old" / "bob" / "disk.img").exists()  # bob's disk is never deleted
    assert again.ensure_session("demo", "carol")["target_iqn"].endswith(":demo.carol")


@pytest.mark.parametrize("damage", [b"{", b'{"user": "bob"}', b'{"user": "bob", "image": "demo", "version": "x", "created": 1}'])
def test_a_damaged_overlay_is_kept_refused_with_a_reason_and_does_not_stop_start_up(
    helper: Helper, lio: FakeLio, damage: bytes,
) -> None:
    helper.ensure_session("demo", "bob")
    alice = helper.ensure_session("demo", "alice")
    meta = helper.store.overlay_dir("demo", "bob") / "meta.json"
    meta.write_bytes(damage)
    again = restarted(helper)
    assert again.book.get("demo", "alice").chap_secret == alice["chap_secret"]  # type: ignore[union-attr]
    assert any("bob" in note and "meta.json" in note for note in again.health()["set_aside"])
    with pytest.raises(Conflict, match="meta.json"):
        again.ensure_session("demo", "bob")  # not a fresh disk over the old one
    assert meta.read_bytes() == damage and (meta.parent / "disk.img").exists()
    with pytest.raises(Conflict, match="meta.json"):
        again.retire("demo", None)  # its golden version is unknown: nothing of demo may go
    assert [row["user"] for row in again.sessions()] == ["alice"]
    assert again.images()[0]["versions"][0]["version"] == 1


# Nothing read-only waits for the lock; nothing slow holds it (issue 15, defect 5)

def test_listings_answer_while_the_lock_is_held(helper: Helper) -> None:
    helper.ensure_session("demo", "alice")
    helper.reset("demo", "alice")
    helper.ensure_session("demo", "alice")
    answers: dict[str, object] = {}

    def list_all() -> None:
        for op in ("sessions", "backups", "images", "health", "published"):
            answers[op] = getattr(helper, op)()

    with helper._lock:  # a long operation, or a queue of logins, holds it
        reader = threading.Thread(target=list_all)
        reader.start()
        reader.join(20)
        assert not reader.is_alive(), "a read-only operation waited for the lock"
    assert [row["user"] for row in answers["sessions"]] == ["alice"]  # type: ignore[attr-defined]
    assert len(answers["backups"]) == 1  # type: ignore[arg-type]


def test_publishing_a_users_disk_ends_their_session_first_and_copies_without_the_lock(
    helper: Helper, lio: FakeLio, monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant = helper.ensure_session("demo", "alice")  # a session, but its workstation is off
    seen: dict[str, object] = {}
    materialize = helper.backend.materialize

    def copying(golden: Path, overlay: Path, name: str, destination: Path) -> None:
        seen["lock_free"] = helper._lock.acquire(blocking=False)
        seen["acls"] = set(lio.targets[TARGET].acls)
        if not seen["lock_free"]:
            return  # copied under the lock: the logins below would wait for it forever
        helper._lock.release()
        with pytest.raises(Conflict, match="being published"):
            helper.ensure_session("demo", "alice")  # her disk must not change while it is copied
        seen["bob"] = helper.ensure_session("demo", "bob")["target_iqn"]  # everyone else logs in meanwhile
        materialize(golden, overlay, name, destination)

    monkeypatch.setattr(helper.backend, "materialize", copying)
    assert helper.publish_overlay("demo", "demo", "alice")["version"] == 2
    assert seen == {"lock_free": True, "acls": set(), "bob": "iqn.2026-11.org.example.lab:demo.bob"}
    assert helper.book.get("demo", "alice") is None and grant["initiator_iqn"] not in lio.targets[TARGET].acls
    assert helper.ensure_session("demo", "alice")["target_iqn"] == TARGET  # and afterwards she boots again


@pytest.mark.parametrize("where", [".", "overlays", "sessions", "overlays/demo", "images/demo"])
def test_the_helper_refuses_to_start_on_a_store_directory_others_can_write(helper: Helper, root: Path, where: str) -> None:
    helper.ensure_session("demo", "alice")
    (root / where).chmod(0o777)
    with pytest.raises(BackendFailure, match=f"{root / where if where != '.' else root} is writable by others"):
        restarted(helper)
    (root / where).chmod(0o700)
    os.chown(root / where, 1000, 1000)
    with pytest.raises(BackendFailure, match="owner uid 1000"):
        restarted(helper)


# Publish reads the file it checked (issue 15, defect 10)

def test_publish_refuses_a_link_and_what_is_not_a_regular_file(helper: Helper, tmp_path: Path) -> None:
    real = golden(tmp_path, b"\2")
    link = tmp_path / "link.img"
    link.symlink_to(real)
    with pytest.raises(BadIdentifier, match="symbolic link"):
        helper.publish("demo", str(link))
    fifo = tmp_path / "fifo.img"
    os.mkfifo(fifo)
    with pytest.raises(BadIdentifier, match="not a regular file"):
        helper.publish("demo", str(fifo))
    assert helper.store.versions("demo") == [1]


def test_publish_copies_from_the_file_it_opened_even_if_the_name_is_swapped_meanwhile(
    helper: Helper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = golden(tmp_path, b"\2")
    secret = tmp_path / "secret"
    secret.write_bytes(b"\7" * 4096)
    stage = helper.store.stage_version

    def swapped_then_staged(image: str, fill: Any) -> Path:
        source.unlink()
        source.symlink_to(secret)  # swapped between the check and the copy
        return stage(image, fill)

    monkeypatch.setattr(helper.store, "stage_version", swapped_then_staged)
    helper.publish("demo", str(source))
    assert helper.store.image_file("demo", 2).read_bytes() == b"\2" * 4096


def test_publish_keeps_the_holes_of_a_sparse_image(helper: Helper, tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.img"
    with open(sparse, "wb") as f:
        f.write(b"\3" * 4096)
        f.truncate(64 << 20)
    helper.publish("demo", str(sparse))
    version = helper.store.image_file("demo", 2)
    assert version.stat().st_size == 64 << 20 and version.stat().st_blocks * 512 < 1 << 20
    with open(version, "rb") as f:
        assert f.read(4096) == b"\3" * 4096 and f.read(4096) == bytes(4096)


def test_publish_of_an_image_whose_filesystem_hides_its_holes_still_leaves_them_holes(
    helper: Helper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 9p (the lab's host files) or NFS without SEEK_DATA, a sparse image reads as one data extent, and
    copy_file_range cannot cross into the store: the blocks of zeros must not be written out (a 3 GiB disk
    with 900 MiB in it filled the lab's store)."""
    dense = tmp_path / "dense.img"
    with open(dense, "wb") as f:  # zeros written, not holes: what SEEK_DATA reports for a file there
        f.write(b"\3" * 4096 + bytes(16 << 20) + b"\4" * 4096)
    monkeypatch.setattr(os, "copy_file_range", no_copy_file_range)
    helper.publish("demo", str(dense))
    version = helper.store.image_file("demo", 2)
    assert version.read_bytes() == dense.read_bytes()
    assert version.stat().st_blocks * 512 < 4 << 20  # the 16 MiB of zeros are a hole


def test_a_publish_that_fills_the_store_says_so_and_leaves_nothing(
    helper: Helper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", no_copy_file_range)
    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(StoreFull, match="the store ran out of room"):
        helper.publish("demo", str(golden(tmp_path, b"\2")))
    assert helper.store.versions("demo") == [1] and helper.store.current_version("demo") == 1
    assert not [p for p in (helper.store.images / "demo").iterdir() if p.name.startswith(".")]


def no_copy_file_range(*args: Any) -> int:
    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))  # another filesystem than the store's


# LIO emptied under the running helper is noticed and repaired (issue 15: reconcile ran only at start)

def test_sessions_lio_lost_while_the_helper_runs_are_put_back_with_their_credentials(helper: Helper, lio: FakeLio) -> None:
    alice = helper.ensure_session("demo", "alice")
    bob = helper.ensure_session("demo", "bob")
    lio.calls.clear()
    assert helper.repair_lost() == 0 and "ensure_target" not in lio.calls  # nothing lost: nothing done
    lio.targets.clear()  # targetctl clear, or target.service restarted
    assert helper.repair_lost() == 0  # first seen: LIO may still be changing under another program
    assert helper.repair_lost() == 2  # still missing at the next round: put back
    for grant, label in ((alice, "alice"), (bob, "bob")):
        target = lio.targets[f"iqn.2026-11.org.example.lab:demo.{label}"]
        assert target.acls == {grant["initiator_iqn"]: (grant["chap_user"], grant["chap_secret"])}
        assert target.attributes == FakeLio.TPG_ATTRIBUTES
    assert "forget" in lio.calls


def test_reconcile_gives_existing_targets_the_discovery_attributes(helper: Helper, lio: FakeLio) -> None:
    helper.ensure_session("demo", "alice")
    helper.end_session("demo", "alice")  # a target without a live session stays
    lio.targets[TARGET].attributes["demo_mode_discovery"] = "1"  # made by an older version, or by hand
    restarted(helper)
    assert lio.targets[TARGET].attributes["demo_mode_discovery"] == "0"


# What a backend keeps outside the overlay's directory (dm-thin: a thin volume in the pool) is freed with it
def test_an_expired_backup_is_discarded_by_the_backend_before_its_directory_goes(
    helper: Helper, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper.ensure_session("demo", "alice")
    backup = helper.reset("demo", "alice")["reset"][0]["backup"]
    assert helper.backend.discarded == []  # type: ignore[attr-defined]
    monkeypatch.setattr(helper.store, "expired_backups", lambda days, now: [p for p, _ in helper.store.list_backups()])
    helper.helpdesk.expire_backups()
    assert helper.backend.discarded == [backup]  # type: ignore[attr-defined]
    assert helper.store.list_backups() == []


def test_a_backup_the_backend_cannot_discard_is_kept_for_the_next_expiry(
    helper: Helper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    helper.ensure_session("demo", "alice")
    helper.reset("demo", "alice")

    def refused(overlay: Path) -> None:
        raise BackendFailure("dmsetup message failed: Device or resource busy")

    monkeypatch.setattr(helper.backend, "discard", refused)
    monkeypatch.setattr(helper.store, "expired_backups", lambda days, now: [p for p, _ in helper.store.list_backups()])
    helper.helpdesk.expire_backups()
    assert len(helper.store.list_backups()) == 1
    assert "tried again at the next expiry" in caplog.text


def test_a_half_made_overlay_is_discarded_by_the_backend_at_once_or_at_start_up(
    helper: Helper, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(golden: Path, work: Path) -> None:
        (work / "thin-id").write_text("7\n")
        raise BackendFailure("dmsetup message failed: No space left on device")

    monkeypatch.setattr(helper.backend, "create", fails)
    with pytest.raises(BackendFailure):
        helper.ensure_session("demo", "alice")
    assert [name.startswith("overlay-") for name in helper.backend.discarded] == [True]  # type: ignore[attr-defined]
    assert list(helper.store.tmp.glob("overlay-*")) == []

    left = helper.store.new_overlay_workdir("demo", "bob")  # as a crash in the middle leaves it
    restarted(helper)
    assert helper.backend.discarded[-1] == left.name and not left.exists()  # type: ignore[attr-defined]


def test_a_half_made_overlay_the_backend_cannot_discard_at_start_up_is_kept_and_the_helper_starts(
    helper: Helper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    helper.ensure_session("demo", "alice")
    left = helper.store.new_overlay_workdir("demo", "bob")  # as a crash in the middle leaves it

    def refused(overlay: Path) -> None:
        raise BackendFailure("dmsetup message failed: Device or resource busy")

    monkeypatch.setattr(helper.backend, "discard", refused)
    again = restarted(helper)  # as for backups and at once: logged, kept, tried again at the next start
    assert left.exists()
    assert f"cannot discard the half-made overlay {left.name}" in caplog.text
    assert again.ensure_session("demo", "alice")["chap_user"] == "alice"


def test_a_pool_below_min_free_percent_refuses_new_users_only(helper: Helper) -> None:
    """dm-thin's overlays grow in its pool, not in the store's filesystem: the reserve applies to the pool."""
    config = dataclasses.replace(helper.config, store=dataclasses.replace(helper.config.store, min_free_percent=5))
    helper = Helper(config, helper.backend, helper.lio, helper.directory)
    helper.start()
    helper.ensure_session("demo", "alice")
    helper.backend.pool = ("the thin pool", 4 << 30, 100 << 30)  # type: ignore[attr-defined]
    with pytest.raises(StoreFull, match=r"the thin pool has 4.0 GiB free, below the 5% \(5.0 GiB\) kept"):
        helper.ensure_session("demo", "bob")
    assert helper.ensure_session("demo", "alice")["chap_user"]  # who has an overlay still boots
    assert helper.store.list_overlays()[0][1].user == "alice" and len(helper.store.list_overlays()) == 1
    helper.backend.pool = ("the thin pool", 6 << 30, 100 << 30)  # type: ignore[attr-defined]
    assert helper.ensure_session("demo", "bob")["chap_user"]


@pytest.mark.parametrize("marked", [True, False], ids=["noted at its first start", "before the note existed"])
def test_a_store_refuses_a_backend_other_than_the_one_its_overlays_were_made_with(helper: Helper, marked: bool) -> None:
    helper.ensure_session("demo", "alice")
    assert (helper.store.root / "backend").read_text() == "reflink\n"
    if not marked:
        (helper.store.root / "backend").unlink()  # judged by the overlay's disk.img

    class ThinBackend(type(helper.backend)):  # type: ignore[misc]
        kind = BackendKind.DM_THIN

    other = Helper(helper.config, ThinBackend(), helper.lio, helper.directory)
    with pytest.raises(BackendFailure, match=r"made with the reflink backend, but \[store\] backend is 'dm-thin': "
                                             r"set backend = \"reflink\""):
        other.start()
    restarted(helper)  # the right backend starts, and notes it
    assert (helper.store.root / "backend").read_text() == "reflink\n"


def test_an_empty_store_takes_the_configured_backend(root: Path, lio: FakeLio) -> None:
    helper = make_helper(root, lio)
    helper.start()
    assert helper.store.made_with() == "reflink"
