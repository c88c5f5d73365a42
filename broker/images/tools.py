"""The command-line tools the image commands run, and which Debian packages they come from."""

from __future__ import annotations

import shutil
from collections.abc import Mapping


def missing_packages(tools: Mapping[str, str]) -> list[str]:
    """The Debian packages to install for the commands of `tools` (command: package) not on PATH, sorted."""
    return sorted({package for tool, package in tools.items() if shutil.which(tool) is None})
