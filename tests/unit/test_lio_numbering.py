"""How the helper numbers a new backstore when rtslib-fb's own numbering collides (the lab's
test_storage_objects_another_program_makes_meanwhile_do_not_break_logins does it on the real LIO)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rtslib_fb import tcm
from rtslib_fb.utils import RTSLibError

from broker.helper import lio


@pytest.fixture
def configfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(lio, "CONFIGFS_TARGET", tmp_path)
    (tmp_path / "core").mkdir()
    return tmp_path / "core"


def test_a_collision_is_retried_with_the_lowest_number_no_hba_directory_has_even_an_empty_one(configfs: Path) -> None:
    (configfs / "fileio_0" / "bb.demo.x").mkdir(parents=True)
    (configfs / "fileio_1").mkdir()  # left empty: rtslib's cache does not count it, so it would take 1 again
    (configfs / "iblock_2").mkdir()  # another kind's numbers are its own
    tcm.bs_cache["fileio/stale"] = 7
    asked: list[int | None] = []

    def create(index: int | None) -> str:
        asked.append(index)
        if index is None:
            raise RTSLibError("This _Backstore already exists in configFS")
        return f"made at {index}"

    assert lio._backstore_made(create, "fileio") == "made at 2"
    assert asked == [None, 2]
    assert tcm.bs_cache == {}  # reread at the next use: rtslib does not note a number given to it


def test_other_errors_are_not_retried(configfs: Path) -> None:
    asked: list[int | None] = []

    def create(index: int | None) -> str:
        asked.append(index)
        raise RTSLibError("Cannot configure StorageObject")

    with pytest.raises(RTSLibError, match="Cannot configure"):
        lio._backstore_made(create, "fileio")
    assert asked == [None]
