"""A netroot script's kernel and initrd served by the broker (the web layer with fake ports): the links
the script gets, the files streamed whole with their length, usable more than once while they live, and
refused when expired, forged, a menu's link, from another address or for another image; the site's own
URLs win; no link reaches a log; every descriptor the helper hands over is closed."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp

import pytest

from broker.shared.config import Config
from broker.web.tls import ensure_certificate, server_context
from broker.web.tokens import FILE_LINK_TTL, TokenSigner
from broker.web.app import FLOW

from .realserver import served
from .test_web import basic, boot_links, make_client  # noqa: F401  make_client is a fixture
from .webfakes import CHAP_SECRET, FakeHelper, broker_config

KERNEL = os.urandom(1 << 20) + b"end of the kernel"  # more than a socket buffer: sent in many pieces
INITRD = os.urandom(300_000)
FILES = {("fedora", 3, "vmlinuz"): KERNEL, ("fedora", 3, "initrd.img"): INITRD}
NOW = 1_000_000.0


def config() -> Config:
    return broker_config({
        "fedora": {"description": "Fedora", "users": ["alice"], "boot": "netroot", "cmdline": "rw quiet"},
        "linux": {
            "description": "Linux by URL", "users": ["alice"], "boot": "netroot",
            "kernel": "https://boot.example.org/f/vmlinuz", "initrd": "https://boot.example.org/f/initrd.img",
        },
    })


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


async def netroot_script(make_client: Any, image: str = "fedora", helper: FakeHelper | None = None,
                         clock: Clock | None = None) -> tuple[Any, str, FakeHelper]:
    helper = helper or FakeHelper(images=("fedora", "linux"), boot_files=dict(FILES), version=3)
    signer = TokenSigner(300, clock=clock or Clock())
    client = await make_client(helper, config=config(), signer=signer)
    menu = await (await client.get("/login.ipxe", headers=basic("alice", "wonderland"))).text()
    response = await client.get(boot_links(menu)[image])
    return client, await response.text(), helper


def file_paths(script: str) -> tuple[str, str]:
    kernel = re.search(r"^kernel https://boot\.example\.org(/boot/fedora/[\w.-]+/vmlinuz) initrd=initrd.img ", script, re.M)
    initrd = re.search(r"^initrd --name initrd.img https://boot\.example\.org(/boot/fedora/[\w.-]+/initrd\.img) \|\| goto failed$",
                       script, re.M)
    assert kernel and initrd, script
    return kernel[1], initrd[1]


async def test_the_script_fetches_the_kernel_and_initrd_of_the_users_version_from_the_broker(make_client: Any) -> None:
    client, script, helper = await netroot_script(make_client)
    assert f"netroot=iscsi:alice:{CHAP_SECRET}@192.0.2.10::3260:0:" in script and " rw quiet " in script
    kernel, initrd = file_paths(script)
    for path, content in ((kernel, KERNEL), (initrd, INITRD)):
        response = await client.get(path)
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(content))
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Cache-Control"] == "no-store"
        assert await response.read() == content
        with pytest.raises(OSError):
            os.fstat(helper.open_files[-1])  # the broker closed the descriptor the helper sent
    assert helper.files_asked == [("fedora", 3, "vmlinuz"), ("fedora", 3, "initrd.img")]  # the version pinned


async def test_a_file_link_works_more_than_once_while_it_lives_then_not(make_client: Any) -> None:
    clock = Clock()
    client, script, _ = await netroot_script(make_client, clock=clock)
    kernel, _ = file_paths(script)
    for _ in range(3):  # iPXE may retry
        assert await (await client.get(kernel)).read() == KERNEL
    clock.now += FILE_LINK_TTL + 1
    expired = await client.get(kernel)
    assert expired.status == 403 and "Your login has expired" in await expired.text()
    metrics = await (await client.get("/metrics")).text()
    assert 'bootbroker_boot_files_total{file="vmlinuz",result="ok"} 3' in metrics
    assert 'bootbroker_boot_files_total{file="vmlinuz",result="refused"} 1' in metrics
    assert f"bootbroker_boot_file_bytes_total {3 * len(KERNEL)}" in metrics


async def test_forged_foreign_and_menu_links_are_refused(make_client: Any) -> None:
    clock = Clock()
    client, script, helper = await netroot_script(make_client, clock=clock)
    kernel, _ = file_paths(script)
    link = kernel.split("/")[3]
    signer = TokenSigner(300, clock=clock)  # another key: another broker, or a guess
    other_address = client.app[FLOW].signer.issue_file_link("alice", "fedora", 3, "192.0.2.99")
    other_version = link.split(".")[0]  # a payload naming another version needs its own MAC
    refused = {
        "forged": kernel.replace(link, link[:-4] + ("AAAA" if not link.endswith("AAAA") else "BBBB")),
        "another key": f"/boot/fedora/{signer.issue_file_link('alice', 'fedora', 3, '127.0.0.1')}/vmlinuz",
        "another address": f"/boot/fedora/{other_address}/vmlinuz",
        "another image": kernel.replace("/boot/fedora/", "/boot/linux/"),
        "a menu's link": f"/boot/fedora/{client.app[FLOW].signer.issue('alice', 'fedora', '127.0.0.1')}/vmlinuz",
        "another payload": f"/boot/fedora/{other_version}.{link.split('.')[1][::-1]}/vmlinuz",
    }
    asked = len(helper.files_asked)
    for why, path in refused.items():
        response = await client.get(path)
        assert response.status == 403, why
    assert len(helper.files_asked) == asked  # the helper was never asked
    # and a file link is no menu link either: it starts no session
    sessions = len(helper.sessions)
    assert (await client.get(f"/boot/fedora.ipxe?token={link}")).status == 403
    assert len(helper.sessions) == sessions
    assert (await client.get(kernel.replace("/vmlinuz", "/grub.cfg"))).status == 404
    assert (await client.get(kernel.replace("/boot/fedora/", "/boot/nothere/"))).status == 404
    assert (await client.get(kernel + "?x=1")).status == 400


async def test_head_answers_the_length_and_range_gets_the_whole_file(make_client: Any) -> None:
    client, script, helper = await netroot_script(make_client)
    kernel, _ = file_paths(script)
    head = await client.head(kernel)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(KERNEL)) and await head.read() == b""
    with pytest.raises(OSError):
        os.fstat(helper.open_files[-1])
    ranged = await client.get(kernel, headers={"Range": "bytes=0-99"})
    assert ranged.status == 200 and await ranged.read() == KERNEL  # Range is not offered: iPXE does not ask


async def test_without_sendfile_the_file_goes_in_chunks(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sendfile(*args: Any, **kwargs: Any) -> int:
        raise asyncio.SendfileNotAvailableError("as for a file or loop without it")
    client, script, _ = await netroot_script(make_client)
    monkeypatch.setattr(asyncio.get_running_loop(), "sendfile", no_sendfile)
    kernel, _ = file_paths(script)
    response = await client.get(kernel)
    assert response.headers["Content-Length"] == str(len(KERNEL)) and await response.read() == KERNEL


async def test_over_tls_the_file_goes_whole(tmp_path: Path) -> None:
    # The broker as `serve` runs it, with its TLS context: asyncio cannot sendfile into a TLS transport
    # (it raises RuntimeError when told not to fall back), so the chunks must be chosen up front.
    cert = ensure_certificate(tmp_path / "broker.crt", tmp_path / "broker.key", ["127.0.0.1"])
    helper = FakeHelper(images=("fedora", "linux"), boot_files=dict(FILES), version=3)
    async with served(config(), {"alice": "wonderland"}, ssl_context=server_context(cert), helper=helper) as s:
        trusting = ssl.create_default_context(cafile=str(cert.certificate))
        async with aiohttp.ClientSession(f"https://127.0.0.1:{s.port}") as session:
            async with session.get("/login.ipxe", headers=basic("alice", "wonderland"), ssl=trusting) as menu:
                links = boot_links(await menu.text())
            async with session.get(links["fedora"].replace("https://boot.example.org", ""), ssl=trusting) as script:
                kernel, initrd = file_paths(await script.text())
            for path, content in ((kernel, KERNEL), (initrd, INITRD)):
                async with session.get(path, ssl=trusting) as response:
                    assert response.status == 200 and await response.read() == content
    assert helper.files_asked == [("fedora", 3, "vmlinuz"), ("fedora", 3, "initrd.img")]


async def test_the_sites_urls_win_over_the_versions_own_files(make_client: Any) -> None:
    files = {("linux", 3, name): b"x" for name in ("vmlinuz", "initrd.img")}
    _, script, _ = await netroot_script(make_client, "linux", FakeHelper(images=("fedora", "linux"), boot_files=files, version=3))
    assert "kernel https://boot.example.org/f/vmlinuz initrd=initrd.img " in script
    assert "initrd --name initrd.img https://boot.example.org/f/initrd.img || goto failed" in script
    assert "/boot/linux/" not in script


async def test_a_version_without_its_own_files_and_no_urls_cannot_boot_by_netroot(
    make_client: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    client = await make_client(FakeHelper(images=("fedora",), version=2), config=config())
    menu = await (await client.get("/login.ipxe", headers=basic("alice", "wonderland"))).text()
    response = await client.get(boot_links(menu)["fedora"])
    assert response.status == 502 and "Your disk could not be prepared" in await response.text()
    assert "fedora v2 has no kernel and initrd of its own" in caplog.text


async def test_no_file_link_reaches_the_logs(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, script, _ = await netroot_script(make_client)
    kernel, initrd = file_paths(script)
    await client.get(kernel)
    await client.get(initrd.replace("/fedora/", "/linux/"))  # refused: logged as a warning too
    link = kernel.split("/")[3]
    assert '"GET /boot/fedora/.../vmlinuz" 200' in caplog.text
    assert "/boot/linux/.../initrd.img" in caplog.text
    assert link not in caplog.text and link.split(".")[1] not in caplog.text


def test_an_older_helpers_answer_has_no_boot_files_and_a_bad_version_is_refused() -> None:
    from broker.web.boot import Grant
    from broker.shared.errors import InternalError
    old = {"target_iqn": "iqn.2026-11.org.example.lab:fedora.alice", "lun": 0, "portals": ["192.0.2.10:3260"],
           "initiator_iqn": "iqn.2026-11.org.example.lab:client.fedora.alice.0a1b2c3d", "chap_user": "alice",
           "chap_secret": CHAP_SECRET}
    grant = Grant.from_helper(old)
    assert (grant.version, grant.boot_files) == (None, False)
    assert Grant.from_helper({**old, "version": 3, "boot_files": "yes"}).boot_files is False
    for version in ("3", 0, True, 2.5):
        with pytest.raises(InternalError, match="malformed"):
            Grant.from_helper({**old, "version": version, "boot_files": True})
