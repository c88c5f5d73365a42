"""The lab tests, and what they share beyond their fixtures (conftest.py)."""

from collections.abc import Callable

Report = Callable[[str], None]  # the `report` fixture: a line for the test run's output, kept on a pass
