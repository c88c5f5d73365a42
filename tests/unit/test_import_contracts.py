"""The import contracts in pyproject.toml (import-linter) hold for the tree, and each one catches the import it
exists to forbid: a copy of the package with that one import added fails it, by the contract's name. A
contract that names a module wrongly would pass everything; this is what shows none does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the copy of the package in `tree`, with the project's pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # before the editable install's path: the copy is imported
    return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "broker", tmp_path / "broker", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    done = lint_imports(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 5 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("web/boot.py", "from ..helper import state", "Layers:"),
    ("shared/config.py", "from ..web import tokens", "Layers:"),
    ("helper/store.py", "from ..web import tokens", "Layers:"),
    ("images/disk.py", "from ..helper import state", "Layers:"),
    ("web/tls.py", "from ..images import disk", "The web side and the shared core import no helper code"),
    ("shared/files.py", "import rtslib_fb", "Only broker.helper.lio imports rtslib-fb"),
    ("helper/store.py", "import pam", "Only broker.web.pam_auth imports the PAM binding"),
    ("helper/server.py", "import subprocess", "Only the storage backends and the image tools run subprocesses"),
])
def test_each_contract_fails_on_the_import_it_forbids(tree: Path, module: str, line: str, broken: str) -> None:
    path = tree / "broker" / module
    text = path.read_text()
    path.write_text(text.replace("from __future__ import annotations\n", f"from __future__ import annotations\n{line}\n", 1))
    done = lint_imports(tree)
    assert done.returncode == 1, done.stdout + done.stderr
    report = done.stdout.split("Broken contracts", 1)[1]
    assert broken in report and f"broker.{module[:-3].replace('/', '.')} -> " in report
