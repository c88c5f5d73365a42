"""The VM lab for tests that need the real kernel: configfs, LIO, device-mapper, reflink.

One VM per test session (booting under TCG takes tens of seconds); tests must clean up what they
create in it. Deselect with `-m "not lab"`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.vm import Lab
from tests.lab import Report

HERE = Path(__file__).parent


ONE_BACKEND = "reflink"  # the default: where a test marked any_backend runs (its `deployment` is per backend)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, deselected = [], []
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.lab)
        params = getattr(item, "callspec", None)
        backend = params.params.get("deployment", ONE_BACKEND) if params is not None else ONE_BACKEND
        if item.get_closest_marker("any_backend") and backend != ONE_BACKEND:
            deselected.append(item)  # what the storage backend cannot change, proved once: lab time is scarce
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    with Lab() as started:
        yield started


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """Print a figure in the test run's output (boot phases, suites negotiated), not only on failure."""
    terminal = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def emit(text: str) -> None:
        with capture.global_and_fixture_disabled():  # else the line is captured, and dropped on a pass
            terminal.write_line(text)

    return emit
