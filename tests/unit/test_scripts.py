"""Golden files for every iPXE script variant, rendered through the real value-building code.

Run with BOOTBROKER_UPDATE_GOLDEN=1 to rewrite the files after a deliberate template change, then review
the diff like code.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from broker.web.boot import BootFlow, Grant
from broker.shared.config import Portal
from broker.shared.errors import InternalError, LoginFailed, TooManyAttempts
from broker.web.limiter import LoginLimiter
from broker.web.scripts import MESSAGE, ScriptRenderer
from broker.web.tokens import TokenSigner

from .webfakes import CHAP_SECRET, FakeAuthenticator, FakeDirectory, FakeHelper, broker_config

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("BOOTBROKER_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


def flow() -> BootFlow:
    config = broker_config()
    assert config.broker is not None
    signer = TokenSigner(300, key=b"k" * 32, clock=lambda: 1_800_000_000.0, nonces=lambda: "N0nceN0nceN0nce0")
    return BootFlow(
        config, config.broker, FakeAuthenticator({"alice": "pw"}), FakeHelper(), FakeDirectory({}), ScriptRenderer(),
        signer, LoginLimiter(config.broker.limits),
    )


GRANT = Grant(
    target_iqn="iqn.2026-11.org.example.lab:demo.alice", lun=0, portals=(Portal("192.0.2.10", 3260),),
    initiator_iqn="iqn.2026-11.org.example.lab:client.demo.alice.0a1b2c3d", chap_user="alice", chap_secret=CHAP_SECRET,
)


def test_entry() -> None:
    check_golden("entry.ipxe", flow().entry())
    check_golden("entry-after-failure.ipxe", flow().entry(after_failure=True))


async def test_menu() -> None:
    check_golden("menu.ipxe", await flow().login("alice", "pw", "192.0.2.50"))


def test_messages() -> None:
    f = flow()
    check_golden("message-login-failed.ipxe", f.failure(LoginFailed("detail for the log only"), "192.0.2.50"))
    check_golden("message-too-many.ipxe", f.failure(TooManyAttempts("detail", retry_after=170), "192.0.2.50"))


def test_sanboot() -> None:
    f = flow()
    check_golden("sanboot.ipxe", f._boot_script(f.config.images["demo"], "alice", GRANT, "192.0.2.50"))


def test_sanboot_multipath_with_ipv6() -> None:
    f = flow()
    grant = Grant(**{**GRANT.__dict__, "portals": (Portal("192.0.2.10", 3260), Portal("2001:db8::10", 3261))})
    check_golden("sanboot-multipath.ipxe", f._boot_script(f.config.images["demo"], "alice", grant, "192.0.2.50"))


def test_netroot() -> None:
    f = flow()
    check_golden("netroot.ipxe", f._boot_script(f.config.images["linux"], "alice", GRANT, "192.0.2.50"))


def test_netroot_with_the_versions_own_kernel_and_initrd() -> None:
    f = flow()
    own = replace(f.config.images["linux"], kernel="", initrd="")  # no URLs: the broker serves v4's
    grant = replace(GRANT, version=4, boot_files=True)
    check_golden("netroot-own-files.ipxe", f._boot_script(own, "alice", grant, "192.0.2.50"))


@pytest.mark.parametrize("value", ["two\nlines", "${password}", "a{b", 'quote"', "x || shell", "tab\there", "nul\0"])
def test_unfit_values_never_reach_a_script(value: str) -> None:
    with pytest.raises(InternalError, match="not fit"):
        ScriptRenderer().render(MESSAGE, {"message": value, "pause_ms": 1, "retry_url": "https://x"})
    with pytest.raises(InternalError, match="not fit"):
        ScriptRenderer().render(MESSAGE, {"message": "ok", "pause_ms": 1, "retry_url": "https://x", "list": [{"k": value}]})


def test_undefined_names_fail_and_site_templates_come_first(tmp_path: Path) -> None:
    with pytest.raises(InternalError, match="undefined"):
        ScriptRenderer().render(MESSAGE, {"message": "no retry_url given"})
    (tmp_path / "message.ipxe.j2").write_text("#!ipxe\necho site: {{ message }}\n")
    assert ScriptRenderer(tmp_path).render(MESSAGE, {"message": "hi"}) == "#!ipxe\necho site: hi\n"


def test_the_sandbox_refuses_to_reach_python_internals(tmp_path: Path) -> None:
    (tmp_path / "message.ipxe.j2").write_text("{{ message.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(Exception, match="unsafe|not safely"):
        ScriptRenderer(tmp_path).render(MESSAGE, {"message": "x"})
