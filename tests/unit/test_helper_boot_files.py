"""A version's own kernel and initrd through the helper's use cases (broker/helper/, broker/helper/store.py) on a
real store: read out of the image at publish (from a file or a user's overlay) and kept beside the version,
immutable; a netroot image without URLs refuses a disk without them and keeps nothing; retire, start-up
and interrupted publishes treat them as they treat the checksum; the broker gets them as open files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.helper import store as store_module
from broker.shared.errors import BadIdentifier, UnknownImage
from broker.helper.copies import is_immutable, set_immutable
from broker.helper.operations import Helper

from .helperfakes import FakeLio, make_helper
from .test_image_bootfiles import INITRD_BYTES, KERNEL_BYTES, K, debian, disk

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("sfdisk", "debugfs", "mke2fs")), reason="needs fdisk and e2fsprogs",
)

NETROOT = {"description": "Fedora", "users": ["*"], "boot": "netroot"}
SANBOOT = {"description": "Demo disk", "users": ["*"]}
WITH_URLS = {**NETROOT, "kernel": "https://boot.example.org/vmlinuz", "initrd": "https://boot.example.org/initrd.img"}


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "store"
    for path in (tmp_path / "store" / "images").glob("*/v*.*"):
        set_immutable(path, False)


@pytest.fixture(scope="module")
def linux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT disk with Debian's kernel and initrd on an ext4 root."""
    base = tmp_path_factory.mktemp("linux")
    return disk(base, debian(base))


def random_disk(tmp_path: Path) -> Path:
    path = tmp_path / "random.img"
    path.write_bytes(os.urandom(64 * 1024))
    return path


def started(root: Path, **images: dict[str, Any]) -> Helper:
    helper = make_helper(root, FakeLio(), **images)
    helper.start()
    return helper


def restarted(helper: Helper) -> Helper:
    again = Helper(helper.config, helper.backend, helper.lio, helper.directory)
    again.start()
    return again


def version_files(helper: Helper, image: str) -> list[str]:
    return sorted(p.name for p in (helper.store.images / image).glob("v*"))


def test_a_netroot_publish_keeps_the_versions_own_kernel_and_initrd_beside_it(root: Path, linux: Path) -> None:
    helper = started(root, fedora=NETROOT)
    result = helper.publish("fedora", str(linux))
    assert (result["kernel"], result["initrd"]) == (f"/boot/vmlinuz-{K}", f"/boot/initrd.img-{K}")
    assert version_files(helper, "fedora") == ["v1.img", "v1.initrd.img", "v1.sha256", "v1.vmlinuz"]
    for name, content in (("vmlinuz", KERNEL_BYTES), ("initrd.img", INITRD_BYTES)):
        path = helper.store.boot_file("fedora", 1, name)
        assert path.read_bytes() == content
        assert path.stat().st_mode & 0o777 == 0o444
        assert is_immutable(path) == result["immutable"]  # as immutable as the version itself
    assert not list(helper.store.tmp.iterdir())  # nothing of the reading is left in the scratch directory
    assert helper.images()[0]["versions"][0]["boot_files"] is True


def test_ensure_session_names_the_overlays_version_and_the_broker_gets_its_files_open(root: Path, linux: Path, tmp_path: Path) -> None:
    helper = started(root, fedora=NETROOT)
    helper.publish("fedora", str(linux))
    session = helper.ensure_session("fedora", "alice")
    assert (session["version"], session["boot_files"]) == (1, True)
    opened = helper.boot_file("fedora", 1, "vmlinuz")
    with os.fdopen(opened.fd, "rb") as f:
        assert f.read() == KERNEL_BYTES and opened.size == len(KERNEL_BYTES)
    with pytest.raises(UnknownImage, match="v2 has no initrd.img"):
        helper.boot_file("fedora", 2, "initrd.img")
    with pytest.raises(BadIdentifier, match="one of vmlinuz, initrd.img"):
        helper.boot_file("fedora", 1, "v1.img")
    with pytest.raises(BadIdentifier, match="one of vmlinuz, initrd.img"):
        helper.boot_file("fedora", 1, "../../sessions/fedora.alice.json")


def test_a_netroot_image_without_urls_refuses_a_disk_without_a_kernel_and_keeps_nothing(
    root: Path, linux: Path, tmp_path: Path,
) -> None:
    helper = started(root, fedora=NETROOT)
    helper.publish("fedora", str(linux))
    with pytest.raises(BadIdentifier) as refused:
        helper.publish("fedora", str(random_disk(tmp_path)))
    message = refused.value.message
    assert "fedora boots by netroot" in message and "sets no kernel and initrd URLs" in message
    assert "no partition table" in message and "nothing was published" in message
    assert version_files(helper, "fedora") == ["v1.img", "v1.initrd.img", "v1.sha256", "v1.vmlinuz"]
    assert helper.store.current_version("fedora") == 1
    assert not list(helper.store.tmp.iterdir())


def test_the_refusal_says_what_was_looked_for_and_where(root: Path, tmp_path: Path) -> None:
    helper = started(root, fedora=NETROOT)
    (tmp_path / "t").mkdir()
    no_kernel = disk(tmp_path, tmp_path / "t")  # an ext4 root with nothing but /etc/fstab... and no fstab
    with pytest.raises(BadIdentifier, match=r"looked for /vmlinuz and /initrd.img.*in the ext4 filesystem on partition 1"):
        helper.publish("fedora", str(no_kernel))
    assert helper.store.versions("fedora") == [] and not helper.store.has_current("fedora")


def test_a_sanboot_image_publishes_random_bytes_as_before_with_no_boot_files(root: Path, tmp_path: Path) -> None:
    helper = started(root, demo=SANBOOT)
    result = helper.publish("demo", str(random_disk(tmp_path)))
    assert (result["version"], result["kernel"], result["initrd"]) == (1, None, None)
    assert version_files(helper, "demo") == ["v1.img", "v1.sha256"]
    session = helper.ensure_session("demo", "alice")
    assert (session["version"], session["boot_files"]) == (1, False)


def test_a_sanboot_image_keeps_its_kernel_too_so_it_can_switch_to_netroot_later(root: Path, linux: Path) -> None:
    helper = started(root, demo=SANBOOT)
    assert helper.publish("demo", str(linux))["kernel"] == f"/boot/vmlinuz-{K}"
    assert helper.store.has_boot_files("demo", 1)


def test_a_netroot_image_with_urls_publishes_a_disk_without_a_kernel(root: Path, tmp_path: Path) -> None:
    helper = started(root, fedora=WITH_URLS)
    assert helper.publish("fedora", str(random_disk(tmp_path)))["version"] == 1


def test_a_users_prepared_disk_published_as_a_netroot_version_brings_its_kernel(root: Path, linux: Path) -> None:
    helper = started(root, demo=SANBOOT, fedora=NETROOT)
    helper.publish("demo", str(linux))
    helper.ensure_session("demo", "teacher")
    result = helper.publish_overlay("fedora", "demo", "teacher")
    assert result["kernel"] == f"/boot/vmlinuz-{K}"
    assert helper.store.boot_file("fedora", 1, "initrd.img").read_bytes() == INITRD_BYTES


def test_retiring_a_version_removes_its_boot_files(root: Path, linux: Path) -> None:
    helper = started(root, fedora=NETROOT)
    helper.publish("fedora", str(linux))
    helper.publish("fedora", str(linux))
    assert helper.retire("fedora", 1)["retired"] == [1]
    assert version_files(helper, "fedora") == ["v2.img", "v2.initrd.img", "v2.sha256", "v2.vmlinuz"]
    helper.retire("fedora", None)
    assert version_files(helper, "fedora") == []


def test_a_publish_that_died_after_its_boot_files_but_before_its_image_leaves_nothing_at_start(
    root: Path, linux: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    helper = started(root, fedora=NETROOT)
    helper.publish("fedora", str(linux))
    renamed = store_module.rename_durably

    def dies_at_the_image(source: Path, destination: Path) -> None:
        if destination.name == "v2.img":
            raise KeyboardInterrupt  # stands for the process dying there
        renamed(source, destination)
    monkeypatch.setattr(store_module, "rename_durably", dies_at_the_image)
    with pytest.raises(KeyboardInterrupt):
        helper.publish("fedora", str(linux))
    monkeypatch.undo()
    assert "v2.vmlinuz" in version_files(helper, "fedora")  # what the dead process left
    again = restarted(helper)
    assert version_files(again, "fedora") == ["v1.img", "v1.initrd.img", "v1.sha256", "v1.vmlinuz"]
    assert again.publish("fedora", str(linux))["version"] == 2
    assert again.store.boot_file("fedora", 2, "vmlinuz").read_bytes() == KERNEL_BYTES


def test_a_publish_that_died_before_it_became_current_is_discarded_with_its_boot_files(
    root: Path, linux: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    helper = started(root, fedora=NETROOT)
    helper.publish("fedora", str(linux))

    def interrupted(point: str) -> None:
        if point == "publish-renamed":
            raise KeyboardInterrupt
    monkeypatch.setattr(store_module, "crash_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        helper.publish("fedora", str(linux))
    monkeypatch.undo()
    again = restarted(helper)
    assert again.store.versions("fedora") == [1]
    assert not list((again.store.images / "fedora").glob("v2*"))


def test_start_up_removes_what_a_publish_was_reading_out_of_its_image(root: Path, linux: Path) -> None:
    helper = started(root, fedora=NETROOT)
    work = helper.store.tmp / "publish-fedora-1-2.boot"  # killed while debugfs dumped the initrd
    work.mkdir()
    (work / "vmlinuz").write_bytes(KERNEL_BYTES)
    (work / "disk.img").symlink_to(helper.store.tmp / "publish-fedora-1-2")
    restarted(helper)
    assert not list(helper.store.tmp.iterdir())


@pytest.mark.parametrize("kernel", [f"/boot/vmlinuz-{K}", None])
def test_images_publish_says_whether_the_version_has_its_own_kernel_and_initrd(
    kernel: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from broker import cli

    class Helper:
        def call(self, op: str, **args: Any) -> dict[str, Any]:
            return {"image": "fedora", "version": 2, "sha256": "ab" * 32, "immutable": True, "kernel": kernel,
                    "initrd": kernel and f"/boot/initrd.img-{K}"}
    monkeypatch.setattr(cli, "_client", lambda args, timeout=60.0: Helper())
    image = random_disk(tmp_path)
    assert cli.main(["--socket", str(tmp_path / "sock"), "images", "publish", "--no-check", "fedora", str(image)]) == 0
    out = capsys.readouterr().out
    if kernel:
        assert f"  kernel /boot/vmlinuz-{K} and initrd /boot/initrd.img-{K} kept beside it (served for netroot)" in out
    else:
        assert "no kernel and initrd of its own: it cannot boot by netroot without kernel and initrd URLs" in out
