"""The privileged helper against the real kernel LIO target, with real iSCSI clients.

Every test runs once per storage backend: dm-thin (a thin pool on XFS, loop devices), reflink (btrfs) and
dm-snapshot (ext4, loop devices), but for those marked any_backend (nothing the backend does), which run on
reflink only (tests/lab/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from lab.vm import Lab
from lab.deployment import (
    GOLDEN_MIB,
    FENCE_LUN_BYTES,
    Deployment,
    Grant,
    clear_lio,
    expect_refused,
    iscsi_tool,
    prepare_accounts,
    qemu_io,
    qemu_io_argv,
    reads_disk,
    wrong_secret,
    Workstation,
)

BACKENDS = {"reflink": "/srv/btrfs/bootbroker", "dm-snapshot": "/srv/ext4/bootbroker", "dm-thin": "/srv/xfs/bootbroker"}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def deployment(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Deployment]:
    prepare_accounts(lab)
    clear_lio(lab)
    d = Deployment(lab, request.param, BACKENDS[request.param])
    d.install()
    d.start()
    d.golden = {image: d.publish_random_golden(image) for image in ("demo", "other")}
    yield d
    if d.process is not None:
        d.stop()
    clear_lio(lab)
    if d.backend != "reflink":  # the next module's overlays have the same device-mapper names
        lab.run(["dmsetup", "remove_all"])
        lab.run(["losetup", "-D"])
    if d.backend == "dm-thin":  # its pool holds a quarter of the XFS disk other modules' stores use
        d.remove_store()


def test_right_secret_logs_in_and_reads_capacity(deployment: Deployment) -> None:
    grant = deployment.ensure_session("alice")
    assert re.fullmatch(r"[A-Za-z0-9]{16,24}", grant.chap_secret)
    assert grant.target_iqn == f"iqn.2026-11.{'.'.join(reversed(deployment.domain.split('.')))}:demo.alice"
    done = iscsi_tool(deployment.lab, "iscsi-readcapacity16", grant)
    assert done.returncode == 0, done.stderr
    assert f"Total size:{GOLDEN_MIB * 2**20}" in done.stdout, done.stdout


def test_wrong_secret_is_refused(deployment: Deployment) -> None:
    grant = deployment.ensure_session("alice")
    done = iscsi_tool(deployment.lab, "iscsi-inq", grant, secret=wrong_secret(grant.chap_secret))
    assert done.returncode != 0
    assert "login" in (done.stderr + done.stdout).lower()
    assert iscsi_tool(deployment.lab, "iscsi-inq", grant).returncode == 0


@pytest.mark.any_backend
def test_another_users_credentials_are_refused(deployment: Deployment) -> None:
    alice = deployment.ensure_session("alice")
    bob = deployment.ensure_session("bob")
    # Bob's initiator and secret on Alice's target.
    done = iscsi_tool(deployment.lab, "iscsi-inq", alice, secret=bob.chap_secret, user=bob.chap_user,
                      initiator=bob.initiator_iqn)
    assert done.returncode != 0
    # Alice's secret with Bob's initiator name: a right secret from the wrong initiator.
    done = iscsi_tool(deployment.lab, "iscsi-inq", alice, initiator=bob.initiator_iqn)
    assert done.returncode != 0


def test_a_second_login_drops_the_first_session(deployment: Deployment) -> None:
    lab = deployment.lab
    first = deployment.ensure_session("carol")
    with Workstation(lab, first) as workstation:
        assert workstation.completes("read 0 4096")
        assert any(s["logged_in"] for s in deployment.cli_json("sessions") if s["user"] == "carol")

        second = deployment.ensure_session("carol")
        assert second.initiator_iqn != first.initiator_iqn and second.chap_secret != first.chap_secret
        assert set(deployment.initiators(first.target_iqn)) == {second.initiator_iqn}

        # The connected client is cut off. It logs in again with its old keys, to its fence: an ACL that maps
        # no LUN, where it finds LIO's 32 KiB virtual LUN 0, which refuses writes and keeps no data.
        assert not workstation.completes(f"read {FENCE_LUN_BYTES} 4096", seconds=20)
        assert not workstation.completes("write -P 0x66 0 4096")
        assert set(deployment.fences(first.target_iqn)) == {first.initiator_iqn}
        assert deployment.fences(first.target_iqn)[first.initiator_iqn]  # logged in: it stopped retrying
    assert not reads_disk(lab, first)
    assert reads_disk(lab, second)
    unchanged = qemu_io(lab, second, "read -P 0x66 0 4096")  # the fenced write reached nothing
    assert "Pattern verification failed" in unchanged.stdout, unchanged.stdout


def _disk_sha256(deployment: Deployment, grant: Grant, tmp_path: Path) -> str:
    """Copy the whole disk over iSCSI with qemu-img and hash it."""
    out = tmp_path / "disk.raw"
    argv = qemu_io_argv(deployment.lab, grant)
    secret_object, image_opts = argv[argv.index("--object") + 1], argv[argv.index("--image-opts") + 1]
    done = subprocess.run(
        ["qemu-img", "convert", "--object", secret_object, "--image-opts", image_opts, "-O", "raw", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_writes_land_in_the_overlay_and_survive_a_new_session(deployment: Deployment, tmp_path: Path) -> None:
    golden = deployment.golden_sha256("demo")
    grant = deployment.ensure_session("dave")
    done = qemu_io(deployment.lab, grant, "write -P 0x5a 0 1M")
    assert done.returncode == 0 and "wrote 1048576/1048576" in done.stdout, done.stdout + done.stderr
    assert deployment.golden_sha256("demo") == golden

    deployment.cli("end-session", "dave", "demo")
    assert iscsi_tool(deployment.lab, "iscsi-inq", grant).returncode != 0
    expect_refused(deployment.cli("end-session", "dave", "demo", check=False), "no_such_session")  # already ended
    again = deployment.ensure_session("dave")
    done = qemu_io(deployment.lab, again, "read -P 0x5a 0 1M")
    assert done.returncode == 0 and "read 1048576/1048576" in done.stdout, done.stdout + done.stderr
    assert _disk_sha256(deployment, again, tmp_path) != golden
    row = next(s for s in deployment.cli_json("sessions") if s["user"] == "dave")
    assert row["overlay_bytes"] >= 2**20
    assert deployment.golden_sha256("demo") == golden


def test_reset_gives_back_the_golden_content_and_keeps_the_old_overlay(deployment: Deployment, tmp_path: Path) -> None:
    grant = deployment.ensure_session("erin")
    assert qemu_io(deployment.lab, grant, "write -P 0x77 0 64k").returncode == 0
    (result,) = deployment.cli_json("reset", "erin", "demo")["reset"]
    assert result["dropped_session"] is True
    assert iscsi_tool(deployment.lab, "iscsi-inq", grant).returncode != 0

    backup = f"{deployment.store}/backups/demo/erin/{result['backup']}"
    listing = deployment.lab.run(["ls", backup]).stdout.split()
    assert "meta.json" in listing
    fresh = deployment.ensure_session("erin")
    assert _disk_sha256(deployment, fresh, tmp_path) == deployment.golden["demo"]
    expect_refused(deployment.cli("reset", "nobody-here", "demo", check=False), "no_such_overlay")
    expect_refused(deployment.cli("reset", "nobody-here", check=False), "no_such_overlay")
    # no IMAGE: every image she has a copy of (only demo: "other" must stay unused, see the images test)
    every = deployment.cli_json("reset", "erin")["reset"]
    assert [(done["image"], done["dropped_session"]) for done in every] == [("demo", True)]


def test_helpdesk_restores_the_backup_of_a_user_with_a_live_session(deployment: Deployment) -> None:
    lab = deployment.lab
    work = deployment.ensure_session("judy")
    assert qemu_io(lab, work, "write -P 0x11 0 1M").returncode == 0  # her work
    (reset,) = deployment.cli_json("reset", "judy", "demo", user="deskstaff")["reset"]
    fresh = deployment.ensure_session("judy")  # logged in again: a fresh copy, her work is in the backup
    assert "Pattern verification failed" in qemu_io(lab, fresh, "read -P 0x11 0 1M").stdout

    restored = deployment.cli_json("restore", "judy", "demo", user="deskstaff")  # the newest backup
    assert restored["restored"] == reset["backup"] and restored["dropped_session"] is True
    assert iscsi_tool(lab, "iscsi-inq", fresh).returncode != 0  # the live session on the fresh copy is gone
    back = deployment.ensure_session("judy")
    done = qemu_io(lab, back, "read -P 0x11 0 1M")
    assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done.stdout + done.stderr
    # the fresh copy it replaced was kept, not deleted
    kept = [b["backup"] for b in deployment.cli_json("backups", user="deskstaff") if b["user"] == "judy"]
    assert kept == [restored["backup"]]

    before = deployment.snapshot()
    expect_refused(deployment.cli("restore", "judy", "demo", "../../etc", user="deskstaff", check=False),
                   "bad_identifier")
    expect_refused(deployment.cli("restore", "judy", "demo", "20000101T000000", check=False), "no_such_overlay")
    expect_refused(deployment.cli("restore", "nobody-here", "demo", check=False), "no_such_overlay")
    expect_refused(deployment.cli("restore", "judy", "demo", user="brokersvc", check=False), "not_permitted")
    assert deployment.snapshot() == before


def test_below_the_free_space_reserve_new_overlays_are_refused_and_existing_users_still_boot(
    deployment: Deployment
) -> None:
    grant = deployment.ensure_session("kim")  # has an overlay
    if deployment.backend == "dm-thin":  # overlays grow in the pool: its free space is what counts
        assert qemu_io(deployment.lab, grant, f"write -P 0x44 0 {GOLDEN_MIB}M", "flush").returncode == 0
    deployment.stop()
    deployment.store_options = "min_free_percent = 99"  # a nearly empty lab disk (pool) is "full" by this rule
    deployment.install()
    deployment.start()
    try:
        before = deployment.snapshot()
        refused = deployment.cli("start-session", "lee", "demo", check=False)
        expect_refused(refused, "store_full")
        where = "the thin pool" if deployment.backend == "dm-thin" else "the store"
        assert re.search(f"{where} has [0-9.]+ GiB free, below the 99%", refused.stderr), refused.stderr
        assert deployment.snapshot() == before  # no half-made overlay
        assert deployment.ensure_session("kim").chap_secret  # kim's overlay exists: she boots
    finally:
        deployment.stop()
        deployment.store_options = ""
        deployment.install()
        deployment.start()
    assert deployment.ensure_session("lee").chap_secret


def test_device_mapper_overlays_report_their_fill_level_and_warn_before_it_is_full(deployment: Deployment) -> None:
    grant = deployment.ensure_session("mia")
    if deployment.backend == "reflink":
        row = next(r for r in deployment.cli_json("sessions") if r["user"] == "mia")
        assert row["fill_percent"] is None  # a clone has no fixed-size store of changes
        return
    if deployment.backend == "dm-thin":  # the pool's fill level: 1 GiB, so warn early enough to see it
        deployment.stop()
        deployment.store_options = "fill_warn_percent = 1"
        deployment.install()
        deployment.start()
    try:
        assert qemu_io(deployment.lab, grant, f"write -P 0x33 0 {GOLDEN_MIB - 2}M").returncode == 0
        row = next(r for r in deployment.cli_json("sessions") if r["user"] == "mia")
        if deployment.backend == "dm-snapshot":
            assert 80 <= row["fill_percent"] < 100, row
            assert "the overlay of mia on demo is" in deployment.log() and "becomes invalid" in deployment.log()
            assert re.search(r"^mia .* (8|9)\d% ", deployment.cli("sessions").stdout, re.MULTILINE)
        else:
            # (GOLDEN_MIB - 2) MiB of a 1 GiB pool, and what other tests wrote; the overlay holds what mia wrote
            assert 1 <= row["fill_percent"] < 20, row  # the fuller of data and metadata (10% of a new pool)
            assert (GOLDEN_MIB - 2) << 20 <= row["overlay_bytes"] < (GOLDEN_MIB + 1) << 20, row
            assert "the overlay of mia on demo is" in deployment.log()
            assert "the thin pool every overlay shares" in deployment.log()
    finally:
        if deployment.store_options:
            deployment.stop()
            deployment.store_options = ""
            deployment.install()
            deployment.start()


RAW_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.stdin.buffer.read())
s.shutdown(socket.SHUT_WR)
print(s.makefile().readline(), end="")
"""


def raw_request(deployment: Deployment, line: bytes | str, user: str | None = None) -> dict:
    text = line if isinstance(line, str) else line.decode()
    done = deployment.lab.run([str(deployment.lab.python), "-c", RAW_CLIENT, deployment.socket],
                              stdin=text + "\n", user=user)
    return json.loads(done.stdout)


BAD_NAMES = ["../etc", "..", "a/b", "/etc/passwd", "a\u0000b", "a\u0001b", "a\nb", "x" * 10_000, "demo\u202e", ""]


@pytest.mark.any_backend
@pytest.mark.parametrize("field", ["image", "user"])
def test_bad_identifiers_are_refused_and_change_nothing(deployment: Deployment, field: str) -> None:
    deployment.ensure_session("frank")
    before = deployment.snapshot()
    for bad in BAD_NAMES:
        args = {"image": "demo", "user": "frank", field: bad}
        reply = raw_request(deployment, json.dumps({"v": 1, "op": "ensure_session", "args": args}))
        expected = "bad_request" if len(bad) > 4000 else "bad_identifier"
        assert reply["ok"] is False and reply["error"]["code"] == expected, (bad[:20], reply)
    reply = raw_request(deployment, json.dumps({"v": 1, "op": "ensure_session", "args": {"image": "nosuch", "user": "frank"}}))
    assert reply["error"]["code"] == "unknown_image"
    expect_refused(deployment.cli("start-session", "frank", "../demo", check=False), "bad_identifier")
    assert deployment.snapshot() == before


@pytest.mark.any_backend
def test_only_an_images_users_and_groups_may_start_a_session_on_it(deployment: Deployment) -> None:
    before = deployment.snapshot()
    for user in ("outsider", "alice"):  # neither named nor in bootbroker-helpdesk
        expect_refused(deployment.cli("start-session", user, "staff", check=False), "not_permitted")
    reply = raw_request(deployment, json.dumps({"v": 1, "op": "ensure_session",
                                                "args": {"image": "staff", "user": "outsider"}}), user="brokersvc")
    assert reply["ok"] is False and reply["error"]["code"] == "not_permitted", reply
    assert deployment.snapshot() == before
    deployment.publish_random_golden("staff")
    grant = deployment.ensure_session("deskstaff", "staff")  # a member of bootbroker-helpdesk
    assert iscsi_tool(deployment.lab, "iscsi-inq", grant).returncode == 0


@pytest.mark.any_backend
def test_malformed_messages_get_error_codes(deployment: Deployment) -> None:
    before = deployment.snapshot()
    assert raw_request(deployment, "not json")["error"]["code"] == "bad_request"
    assert raw_request(deployment, '{"v": 9, "op": "health", "args": {}}')["error"]["code"] == "unsupported_version"
    assert raw_request(deployment, '{"v": 1, "op": "run_shell", "args": {"cmd": "id"}}')["error"]["code"] == "bad_request"
    assert raw_request(deployment, '{"v": 1, "op": "ensure_session", "args": {"image": 1, "user": []}}')["error"]["code"] == "bad_identifier"
    assert deployment.snapshot() == before
    health = deployment.cli_json("health")
    assert health["backend"] == deployment.backend and health["overlays"] >= 1 and health["store_free_bytes"] > 0


@pytest.mark.any_backend
def test_peers_get_only_their_operations(deployment: Deployment) -> None:
    deployment.ensure_session("gina")
    # The broker's account may start sessions and read health, nothing else.
    assert deployment.cli("start-session", "gina", "demo", user="brokersvc").rc == 0
    assert deployment.cli("health", user="brokersvc").rc == 0
    expect_refused(deployment.cli("reset", "gina", "demo", user="brokersvc", check=False), "not_permitted")
    expect_refused(deployment.cli("sessions", user="brokersvc", check=False), "not_permitted")
    # Helpdesk may list and reset, not start sessions or publish.
    assert any(s["user"] == "gina" for s in deployment.cli_json("sessions", user="deskstaff"))
    expect_refused(deployment.cli("start-session", "gina", "demo", user="deskstaff", check=False), "not_permitted")
    expect_refused(deployment.cli("images", "publish", "demo", "/etc/hostname", "--no-check", user="deskstaff",
                                  check=False),
                   "not_permitted")
    # Anyone else cannot even connect.
    expect_refused(deployment.cli("health", user="outsider", check=False), "helper_unavailable")
    mode = deployment.lab.run(["stat", "-c", "%a %U %G", deployment.socket]).stdout.split()
    assert mode == ["660", "root", "bootbroker"]


@pytest.mark.any_backend
def test_session_records_are_root_only_and_secrets_stay_out_of_the_log(deployment: Deployment) -> None:
    grant = deployment.ensure_session("hank")
    sessions = f"{deployment.store}/sessions"
    record = f"{sessions}/demo.hank.json"
    assert deployment.lab.run(["stat", "-c", "%a %U", sessions]).stdout.split() == ["700", "root"]
    assert deployment.lab.run(["stat", "-c", "%a %U", record]).stdout.split() == ["600", "root"]
    assert grant.chap_secret in deployment.lab.run(["cat", record]).stdout
    assert grant.chap_secret not in deployment.log()


def test_sessions_come_back_after_a_helper_restart_and_after_lio_is_lost(deployment: Deployment) -> None:
    grant = deployment.ensure_session("ivy")
    deployment.stop()
    deployment.start()
    assert iscsi_tool(deployment.lab, "iscsi-inq", grant).returncode == 0
    # A server reboot empties the kernel's LIO; the state file brings the live sessions back.
    deployment.stop()
    clear_lio(deployment.lab)
    if deployment.backend != "reflink":  # as a reboot does
        deployment.lab.run(["dmsetup", "remove_all"])
        deployment.lab.run(["losetup", "-D"])
    deployment.start()
    assert iscsi_tool(deployment.lab, "iscsi-inq", grant).returncode == 0
    assert any(s["user"] == "ivy" for s in deployment.cli_json("sessions"))


def discovered(deployment: Deployment, initiator: str) -> list[str]:
    """The target names SendTargets discovery answers `initiator` (libiscsi's iscsi-ls, no credentials)."""
    done = subprocess.run(["iscsi-ls", "-i", initiator, f"iscsi://127.0.0.1:{deployment.lab.iscsi_port}"],
                          capture_output=True, text=True, timeout=120, check=False)
    return re.findall(r"Target:(\S+)", done.stdout)


@pytest.mark.any_backend
def test_discovery_lists_a_target_only_to_its_own_sessions_initiator(deployment: Deployment) -> None:
    """Target names name users: discovery must not give a stranger the list of everyone who has a disk."""
    judy, kim = deployment.ensure_session("judy"), deployment.ensure_session("kim")
    prefix = judy.target_iqn.split(":")[0]
    assert discovered(deployment, f"{prefix}:client.demo.stranger.0badc0de") == []
    assert discovered(deployment, judy.initiator_iqn) == [judy.target_iqn]  # what dracut's netroot does first
    assert discovered(deployment, kim.initiator_iqn) == [kim.target_iqn]
    # A target changed by hand (or made by an older version) is put right when the helper starts.
    attribute = f"/sys/kernel/config/target/iscsi/{kim.target_iqn}/tpgt_1/attrib/demo_mode_discovery"
    deployment.lab.run(["sh", "-c", f"echo 1 > {attribute}"])
    deployment.stop()
    deployment.start()
    assert deployment.lab.run(["cat", attribute]).stdout.strip() == "0"
    assert kim.target_iqn not in discovered(deployment, f"{prefix}:client.demo.stranger.0badc0de")


STRAY_ACL = """
import sys
from rtslib_fb import TPG, FabricModule, NodeACL, Target
NodeACL(TPG(Target(FabricModule("iscsi"), sys.argv[1], "lookup"), 1, "lookup"), sys.argv[2], "create")
"""


@pytest.mark.any_backend
def test_a_login_removes_every_acl_of_its_target_even_one_no_record_knows(deployment: Deployment) -> None:
    first = deployment.ensure_session("leo")
    stray = first.initiator_iqn.rsplit(".", 1)[0] + ".5742a7a7"
    deployment.lab.run([str(deployment.lab.python), "-c", STRAY_ACL, first.target_iqn, stray])
    assert set(deployment.initiators(first.target_iqn)) == {first.initiator_iqn}
    assert set(deployment.fences(first.target_iqn)) == {stray}  # an ACL that maps no LUN, as a fence
    second = deployment.ensure_session("leo")
    assert set(deployment.initiators(first.target_iqn)) == {second.initiator_iqn}
    assert set(deployment.fences(first.target_iqn)) == {first.initiator_iqn}  # the stray is gone
    assert deployment.problems() == []


def test_lio_emptied_while_the_helper_runs_is_put_back_and_the_workstation_reconnects(deployment: Deployment) -> None:
    lab = deployment.lab
    grant = deployment.ensure_session("max")
    with Workstation(lab, grant) as workstation:
        assert workstation.completes("write -f -P 0x4d 0 64k")
        clear_lio(lab)  # as `targetctl clear` or a restart of target.service would, under the running helper
        # Within two rounds of the helper's watch (10 s each: it repairs what it found missing twice) the
        # target, its LUN and the ACL are back with the same credentials, and the same qemu-io (libiscsi
        # reconnects by itself) reads what it wrote.
        mapped = f"/sys/kernel/config/target/iscsi/{grant.target_iqn}/tpgt_1/acls/{grant.initiator_iqn}/lun_0"
        deadline = time.monotonic() + 60
        while lab.run(["test", "-d", mapped], check=False).rc != 0:
            assert time.monotonic() < deadline, "the helper did not put the session back"
            time.sleep(2)
        assert workstation.completes("read -P 0x4d 0 64k", seconds=120), workstation.output
        assert deployment.initiators(grant.target_iqn) == {grant.initiator_iqn: True}
    assert "their targets and ACLs are back" in deployment.log()
    assert iscsi_tool(lab, "iscsi-inq", deployment.ensure_session("nia")).returncode == 0  # logins go on


OTHER_TOOL = """
import sys
from pathlib import Path
from rtslib_fb import FileIOStorageObject
core = Path("/sys/kernel/config/target/core")
used = {p.name.rpartition("_")[2] for p in core.glob("fileio_*")}
index = next(n for n in range(1 << 20) if str(n) not in used)
so = FileIOStorageObject("another-tool", dev="/tmp/another-tool.img", size=1 << 20, index=index)
(core / f"fileio_{index + 1}").mkdir()  # an HBA directory left empty, as by a program stopped half-way
sys.stdout.write(so.path)
"""


def test_storage_objects_another_program_makes_meanwhile_do_not_break_logins(deployment: Deployment) -> None:
    """rtslib numbers backstores from a per-process cache: a backstore made by another program (targetcli,
    rtslib in another process) while the helper runs took the number the helper would pick next, and an
    HBA directory left empty the one after it (rtslib's cache, reread, does not count an empty one)."""
    deployment.ensure_session("lee")  # the helper's cache is read by now
    lab = deployment.lab
    path = lab.run([str(lab.python), "-c", OTHER_TOOL]).stdout
    hba = PurePosixPath(path).parent  # .../core/fileio_N
    empty = hba.with_name(f"fileio_{int(hba.name.rpartition('_')[2]) + 1}")
    try:
        for user in ("mia", "ned"):  # the first collides and is retried; the second finds a free number
            grant = deployment.ensure_session(user)
            assert iscsi_tool(lab, "iscsi-inq", grant).returncode == 0
        assert lab.run(["test", "-d", path], check=False).rc == 0  # the other program's object is untouched
    finally:
        lab.run([str(lab.python), "-c",
                 "from rtslib_fb import FileIOStorageObject; FileIOStorageObject('another-tool').delete()"])
        lab.run(["rmdir", str(empty)])
    assert deployment.problems() == []


def test_images_list_versions_and_retire_refuses_what_is_in_use(deployment: Deployment) -> None:
    # Last in this module: it publishes new versions, which the tests above do not expect.
    deployment.ensure_session("ivan")  # an overlay of demo v1
    deployment.publish_random_golden("demo")  # v2 becomes current; ivan stays on v1
    listed = {row["image"]: row for row in deployment.cli_json("images", "list", user="deskstaff")}
    demo = {v["version"]: v for v in listed["demo"]["versions"]}
    assert listed["demo"]["current"] == 2 and demo[2]["current"] and not demo[1]["current"]
    assert demo[1]["overlays"] >= 1 and demo[2]["overlays"] == 0
    assert demo[1]["size"] == GOLDEN_MIB * 2**20
    assert demo[1]["sha256"] == deployment.golden_sha256("demo", 1)  # what sha256sum says
    golden = f"{deployment.store}/images/demo/v1.img"
    assert "i" in deployment.lab.run(["lsattr", golden]).stdout.split()[0]  # immutable (chattr +i)
    assert deployment.lab.run(["rm", "-f", golden], check=False).rc != 0  # not even root deletes it
    table = deployment.cli("images", "list").stdout
    assert re.search(r"^demo +2 yes ", table, re.MULTILINE), table

    before = deployment.snapshot()
    expect_refused(deployment.cli("images", "retire", "demo@2", check=False), "conflict")  # the current one
    refused = deployment.cli("images", "retire", "demo@1", check=False)
    expect_refused(refused, "conflict")
    assert "ivan" in refused.stderr  # who holds it
    expect_refused(deployment.cli("images", "retire", "demo", check=False), "conflict")
    expect_refused(deployment.cli("images", "retire", "other@1", user="deskstaff", check=False), "not_permitted")
    assert deployment.snapshot() == before

    # An admin goes back to v1 for new overlays and forward again; start-up keeps both (it kept only v1 before).
    assert "v1 is current (was v2)" in deployment.cli("images", "current", "demo", "1").stdout
    expect_refused(deployment.cli("images", "current", "demo", "2", user="deskstaff", check=False), "not_permitted")
    expect_refused(deployment.cli("images", "current", "demo", "9", check=False), "unknown_image")
    deployment.stop()
    deployment.start()
    listed = {row["image"]: row for row in deployment.cli_json("images", "list")}
    assert [v["version"] for v in listed["demo"]["versions"]] == [1, 2] and listed["demo"]["current"] == 1
    deployment.cli("images", "current", "demo", "2")
    rebased = deployment.cli_json("rebase", "ivan", "demo", user="deskstaff")  # the helpdesk moves ivan to v2
    assert (rebased["from"], rebased["to"]) == (1, 2)
    deployment.ensure_session("ivan")
    assert next(row for row in deployment.cli_json("sessions") if row["user"] == "ivan")["version"] == 2
    expect_refused(deployment.cli("rebase", "ivan", "demo", check=False), "conflict")  # already on v2
    expect_refused(deployment.cli("images", "retire", "demo@1", check=False), "conflict")  # his v1 backup
    # No test here boots "other": nothing holds it, so it goes.
    assert deployment.cli("images", "retire", "other").stdout.strip() == "retired other v1"
    other = next(row for row in deployment.cli_json("images", "list") if row["image"] == "other")
    assert other["current"] is None and other["versions"] == []
    expect_refused(deployment.cli("start-session", "ivan", "other", check=False), "unknown_image")


def test_a_users_prepared_disk_is_published_as_the_next_version_of_an_image(deployment: Deployment) -> None:
    # After the images test, which retired every version of "other".
    lab = deployment.lab
    teacher = deployment.ensure_session("tess")
    assert qemu_io(lab, teacher, "write -P 0x44 0 1M").returncode == 0  # she prepares the disk
    publish = ("images", "publish", "other", "--from-overlay", "demo")
    with Workstation(lab, teacher) as workstation:  # she is still logged in
        assert workstation.completes("read 0 4096")
        refused = deployment.cli(*publish, "tess", check=False)
        expect_refused(refused, "conflict")
        assert "tess is logged in on demo" in refused.stderr
    deadline = time.monotonic() + 30  # LIO notices the closed connection
    while any(s["logged_in"] for s in deployment.cli_json("sessions") if s["user"] == "tess"):
        assert time.monotonic() < deadline, "tess's session stayed logged in"
        time.sleep(1)
    expect_refused(deployment.cli(*publish, "tess", user="deskstaff", check=False), "not_permitted")
    expect_refused(deployment.cli(*publish, "nobody-here", check=False), "no_such_overlay")

    published = deployment.cli(*publish, "tess").stdout
    assert "from the overlay of tess on demo" in published and "sha256 " in published
    student = deployment.ensure_session("uma", "other")  # a new overlay, from the published version
    done = qemu_io(lab, student, "read -P 0x44 0 1M")
    assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done.stdout + done.stderr
    assert not any(s["user"] == "tess" for s in deployment.cli_json("sessions"))  # ended before the copy
    again = deployment.ensure_session("tess")  # her own disk is untouched
    assert "Pattern verification failed" not in qemu_io(lab, again, "read -P 0x44 0 1M").stdout
