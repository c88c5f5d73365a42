"""The VM lab for tests that need the real kernel: configfs, LIO, device-mapper, reflink.

One VM per test session (booting under TCG takes tens of seconds); tests must clean up what they
create in it. Deselect with `-m "not lab"`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.vm import Lab

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    with Lab() as started:
        yield started
