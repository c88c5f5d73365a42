"""The demo's screen printer (lab/demo.py): what it prints of a workstation's screen."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest

from lab.demo import READ_ONLY, STORY, Screen


class FakeClient:
    def __init__(self, text: str) -> None:
        self.text = text
        self.dir = Path("/runs/workstation-1")

    def screen(self) -> str:
        return self.text

    def transcript(self, start: int, end: int | None = None) -> list[str]:
        return self.text[start:end].splitlines()


FENCED = "\n".join([
    "[ 78.2] connection1:0: detected conn error",
    "[ 82.1] random noise",
    "[ 82.2] Buffer I/O error on device sda3, logical block 194577",
    "[ 84.4] EXT4-fs (sda3): Remounting filesystem read-only",
    "[ 84.5] Buffer I/O error on dev sda3, logical block 0, lost sync page write",
    "[ 84.6] EXT4-fs (sda3): Remounting filesystem read-only",
]) + "\n"


def test_a_fenced_os_is_shown_up_to_its_root_going_read_only_and_the_rest_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    screen = Screen(cast(Any, FakeClient(FENCED)))
    screen.show(STORY, last=READ_ONLY)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("| ", 1)[1] for line in printed] == [
        "[ 78.2] connection1:0: detected conn error",
        "[ 82.2] Buffer I/O error on device sda3, logical block 194577",
        "[ 84.4] EXT4-fs (sda3): Remounting filesystem read-only",
        "... and 2 more such lines",
    ]
    assert all(line.startswith("   workstation-1| ") for line in printed)
    screen.show(STORY)  # what was shown or counted is not shown again
    assert capsys.readouterr().out == ""


def test_without_last_every_matching_line_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    Screen(cast(Any, FakeClient(FENCED))).show(re.compile("read-only"))
    assert len(capsys.readouterr().out.splitlines()) == 2
