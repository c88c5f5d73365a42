"""Every way back to the login prompt forgets the password (issue 15): the rendered scripts are read as iPXE
runs them (labels, `goto`, `||`, `&&`, commands that leave the script when they work) and every path from
where a password is stored (`login`, `set password`) to where the prompt comes back (`:start`, or chaining
the entry script) must pass a `clear password`. Otherwise a typed password (or a session's CHAP secret)
stays in iPXE's settings for the next person at the workstation, e.g. when the broker is down."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import pytest

from broker.web.boot import BootFlow, Grant
from broker.shared.config import Portal
from broker.shared.errors import LoginFailed
from broker.web.limiter import LoginLimiter
from broker.web.scripts import ScriptRenderer
from broker.web.tokens import TokenSigner

from .webfakes import CHAP_SECRET, FakeAuthenticator, FakeDirectory, FakeHelper, broker_config

END = -1  # the script is left: replaced by a chained one, an OS booted, or iPXE exits
LEAVES_WHEN_IT_WORKS = ("chain --replace", "sanboot", "boot", "exit")


@dataclass
class Script:
    lines: list[str]  # commands only (no comments, labels, blank lines)
    labels: dict[str, int]  # label -> index of the command after it
    items: list[str]  # the menu's item keys, where `goto ${selected}` may go

    @classmethod
    def parse(cls, text: str) -> Script:
        lines: list[str] = []
        labels: dict[str, int] = {}
        for raw in text.splitlines()[1:]:
            line = raw.strip()
            if line.startswith(":"):
                labels[line[1:]] = len(lines)
            elif line and not line.startswith("#"):
                lines.append(line)
        items = [line.split()[1] for line in lines if line.startswith("item ") and not line.startswith("item --")]
        return cls(lines, labels, items)

    def _goto(self, command: str) -> list[int]:
        target = command.split()[1]
        if target == "${selected}":
            return [self.labels[item] for item in self.items]
        assert target in self.labels, f"goto {target}: no such label"
        return [self.labels[target]]

    def _after(self, command: str, i: int) -> list[int]:
        """Where iPXE goes after `command` (on line i) worked."""
        if command.startswith("goto "):
            return self._goto(command)
        if command.startswith(LEAVES_WHEN_IT_WORKS):
            return [END]
        return [i + 1]

    def successors(self, i: int) -> list[int]:
        if i >= len(self.lines):
            return [END]
        line = self.lines[i]
        main, has_fallback, fallback = (part.strip() for part in line.partition("||"))
        first, _, then = (part.strip() for part in main.partition("&&"))
        worked = self._after(then, i) if then else self._after(first, i)
        if not has_fallback:
            failed = [END]  # an uncaught failure ends the script
        elif fallback:
            failed = self._goto(fallback)
        else:
            failed = [i + 1]
        return worked + failed

    def leaks(self) -> list[list[str]]:
        """Paths from a stored password back to the prompt that never clear it."""
        sources = [i for i, line in enumerate(self.lines) if line == "login" or line.startswith(("login ", "set password"))]
        prompt = {self.labels[label] for label in ("start",) if label in self.labels}
        found = []
        for source in sources:
            stack: list[tuple[int, list[int]]] = [(n, [source]) for n in self.successors(source)]
            seen: set[int] = set()
            while stack:
                node, path = stack.pop()
                if node == END:
                    continue
                line = self.lines[node] if node < len(self.lines) else ""
                if node in prompt or re.match(r"chain .*/boot\.ipxe", line):
                    found.append([self.lines[n] for n in path])  # each way in is a leak of its own
                    continue
                if node in seen or line == "clear password":
                    continue
                seen.add(node)
                stack.extend((n, path + [node]) for n in self.successors(node))
        return found


def flow() -> BootFlow:
    config = broker_config()
    assert config.broker is not None
    return BootFlow(
        config, config.broker, FakeAuthenticator({"alice": "pw"}), FakeHelper(), FakeDirectory({}), ScriptRenderer(),
        TokenSigner(300), LoginLimiter(config.broker.limits),
    )


GRANT = Grant(
    target_iqn="iqn.2026-11.org.example.lab:demo.alice", lun=0, portals=(Portal("192.0.2.10", 3260),),
    initiator_iqn="iqn.2026-11.org.example.lab:client.demo.alice.0a1b2c3d", chap_user="alice", chap_secret=CHAP_SECRET,
)


async def scripts() -> dict[str, str]:
    f = flow()
    return {
        "entry": f.entry(),
        "entry-after-failure": f.entry(after_failure=True),
        "menu": await f.login("alice", "pw", "192.0.2.50"),
        "message": f.failure(LoginFailed("detail"), "192.0.2.50"),
        "sanboot": f._boot_script(f.config.images["demo"], "alice", GRANT, "192.0.2.50"),
        "netroot": f._boot_script(f.config.images["linux"], "alice", GRANT, "192.0.2.50"),
        "netroot-own-files": f._boot_script(replace(f.config.images["linux"], kernel="", initrd=""), "alice",
                                            replace(GRANT, version=4, boot_files=True), "192.0.2.50"),
    }


@pytest.mark.parametrize("name", ["entry", "entry-after-failure", "menu", "message", "sanboot", "netroot", "netroot-own-files"])
async def test_every_way_back_to_the_prompt_clears_the_password(name: str) -> None:
    assert Script.parse((await scripts())[name]).leaks() == []


def test_the_path_reader_finds_a_leak() -> None:
    """The reader itself: the entry script as it was before issue 15 leaks on two paths."""
    script = Script.parse("#!ipxe\n:start\nchoose x || goto local\ngoto ${selected}\n:login\nlogin || goto start\n"
                          "chain --replace https://b/login.ipxe || goto failed\n:failed\n"
                          "chain --replace https://b/message.ipxe || goto start\n:local\nexit\n")
    assert script.items == [] and len(script.leaks()) == 2


async def test_log_out_forgets_the_user_name_too() -> None:
    """The next person's login prompt must not offer the last one's name."""
    menu = Script.parse((await scripts())["menu"])
    assert menu.lines[menu.labels["logout"]] == "clear username"
