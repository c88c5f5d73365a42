"""How the helper numbers LIO's backstores itself (broker/helper/backstores.py) and retries a number another
program took (the lab's test_storage_objects_another_program_makes_meanwhile_do_not_break_logins does it on
the real LIO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rtslib_fb.utils import RTSLibError

from broker.helper import lio
from broker.helper.backstores import BackstoreNumbers


@pytest.fixture
def core(tmp_path: Path) -> Path:
    core = tmp_path / "core"
    (core / "fileio_0" / "bb.demo.x").mkdir(parents=True)
    (core / "fileio_1").mkdir()  # left empty by another program: its number is taken all the same
    (core / "fileio_3" / "bb.demo.y").mkdir(parents=True)
    (core / "iblock_0" / "bb.demo.z").mkdir(parents=True)  # another kind's numbers are its own
    (core / "alua").mkdir()  # not a backstore
    return core


def test_numbers_are_read_from_configfs_once(core: Path) -> None:
    numbers = BackstoreNumbers(core)
    assert numbers.of("fileio", "bb.demo.y") == 3
    assert numbers.of("iblock", "bb.demo.z") == 0
    assert numbers.of("fileio", "bb.demo.z") is None
    (core / "fileio_9" / "bb.demo.later").mkdir(parents=True)
    assert numbers.of("fileio", "bb.demo.later") is None  # not reread on every lookup
    numbers.forget()
    assert numbers.of("fileio", "bb.demo.later") == 9


def test_a_new_number_fills_the_lowest_gap_then_counts_on(core: Path) -> None:
    numbers = BackstoreNumbers(core)
    assert numbers.take("fileio", "a") == 2
    assert numbers.take("fileio", "b") == 4
    assert numbers.take("fileio", "c") == 5
    assert numbers.take("iblock", "d") == 1
    assert numbers.take("pscsi", "e") == 0  # a kind with no backstore yet
    assert numbers.of("fileio", "b") == 4


def test_a_released_number_is_taken_again_lowest_first(core: Path) -> None:
    numbers = BackstoreNumbers(core)
    for name in ("a", "b", "c"):
        numbers.take("fileio", name)  # 2, 4, 5
    numbers.release("fileio", "c")
    numbers.release("fileio", "bb.demo.x")
    numbers.release("fileio", "never made")  # ignored
    assert numbers.of("fileio", "bb.demo.x") is None
    assert [numbers.take("fileio", n) for n in ("p", "q", "r")] == [0, 5, 6]


def test_after_the_first_read_configfs_is_not_read_again(core: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    numbers = BackstoreNumbers(core)
    numbers.take("fileio", "first")

    def no_read(*args: object) -> object:
        raise AssertionError("read configfs again")

    monkeypatch.setattr(Path, "glob", no_read)
    monkeypatch.setattr(Path, "iterdir", no_read)
    for i in range(100):
        numbers.take("fileio", f"user{i}")
    numbers.release("fileio", "user7")
    assert (numbers.of("fileio", "user99"), numbers.take("fileio", "again")) == (103, 11)


class Made:
    def __init__(self, name: str, dev: str | None = None, index: int | None = None, **extra: Any) -> None:
        self.name, self.index = name, index


def test_a_number_another_program_took_meanwhile_is_retried_once_with_a_free_one(
        core: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lio, "CONFIGFS_TARGET", tmp_path)
    taken = lio.Lio([])
    taken.numbers.of("fileio", "warm up")  # read configfs now, before the other program's change
    (core / "fileio_2").mkdir()  # another program's, made after the read
    asked: list[int | None] = []

    class Colliding(Made):
        def __init__(self, name: str, dev: str | None = None, index: int | None = None, **extra: Any) -> None:
            asked.append(index)
            if (core / f"fileio_{index}").exists():
                raise RTSLibError("This _Backstore already exists in configFS")
            super().__init__(name, dev, index)

    monkeypatch.setitem(lio._KINDS, "fileio", (Colliding, "fileio"))
    device = tmp_path / "disk.img"
    device.write_bytes(b"\0" * 512)
    made = taken._new_storage_object("bb.demo.new", "fileio", device)
    assert (made.index, asked) == (4, [2, 4])
    assert taken.numbers.of("fileio", "bb.demo.new") == 4


def test_other_errors_are_not_retried_and_leave_the_number_free(
        core: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lio, "CONFIGFS_TARGET", tmp_path)
    refusing = lio.Lio([])
    asked: list[int | None] = []

    class Refused(Made):
        def __init__(self, name: str, dev: str | None = None, index: int | None = None, **extra: Any) -> None:
            asked.append(index)
            raise RTSLibError("Cannot configure StorageObject")

    monkeypatch.setitem(lio._KINDS, "block", (Refused, "iblock"))
    with pytest.raises(RTSLibError, match="Cannot configure"):
        refusing._new_storage_object("bb.demo.new", "block", tmp_path)
    assert asked == [1]
    assert refusing.numbers.of("iblock", "bb.demo.new") is None
    assert refusing.numbers.take("iblock", "next") == 1


@pytest.mark.parametrize("cache, options", [
    (lio.FileioCache.WRITE_THROUGH, {"write_back": False, "aio": False}),
    (lio.FileioCache.DIRECT_AIO, {"write_back": False, "aio": True}),
    (lio.FileioCache.WRITE_BACK, {"write_back": True, "aio": False}),
])
def test_a_fileio_backstore_is_made_with_the_chosen_write_cache_and_a_block_one_with_none(
        core: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: lio.FileioCache,
        options: dict[str, bool]) -> None:
    monkeypatch.setattr(lio, "CONFIGFS_TARGET", tmp_path)
    given: list[dict[str, Any]] = []

    class Recorded(Made):
        def __init__(self, name: str, dev: str | None = None, index: int | None = None, **extra: Any) -> None:
            given.append(extra)
            super().__init__(name, dev, index)

    monkeypatch.setitem(lio._KINDS, "fileio", (Recorded, "fileio"))
    monkeypatch.setitem(lio._KINDS, "block", (Recorded, "iblock"))
    device = tmp_path / "disk.img"
    device.write_bytes(b"\0" * 4096)
    made = lio.Lio([], fileio_cache=cache)
    made._new_storage_object("bb.demo.file", "fileio", device)
    made._new_storage_object("bb.demo.block", "block", device)
    assert given == [{"size": 4096, **options}, {}]
