import stat
from pathlib import Path

import pytest

from broker.shared import files
from broker.helper.state import BootSession, SessionBook


def session(user: str, secret: str = "S" * 20) -> BootSession:
    return BootSession("demo", user, user.lower(), 1, f"iqn.x:client.{user}", user.lower(), secret, 1.0)


def test_sessions_survive_a_reload_and_files_are_private(tmp_path: Path) -> None:
    book = SessionBook(tmp_path / "sessions")
    book.load()
    book.put(session("alice"))
    book.put(session("bob"))
    book.put(session("alice", secret="T" * 20))  # a rotation replaces the record
    book.remove("demo", "bob")
    book.remove("demo", "nobody")

    again = SessionBook(tmp_path / "sessions")
    again.load()
    assert again.all() == [session("alice", secret="T" * 20)]
    assert len(again) == 1
    assert stat.S_IMODE((tmp_path / "sessions").stat().st_mode) == 0o700
    (record,) = (tmp_path / "sessions").iterdir()
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


def test_ending_a_session_syncs_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a power cut a removed record must stay removed, or the start-up repair brings back a revoked ACL."""
    book = SessionBook(tmp_path / "sessions")
    book.load()
    book.put(session("alice"))
    synced: list[Path] = []
    monkeypatch.setattr(files, "sync_directory", synced.append)
    book.remove("demo", "alice")
    assert synced == [tmp_path / "sessions"]
    assert not list((tmp_path / "sessions").iterdir())


@pytest.mark.parametrize("content", [b"{not json", b'{"format": 1, "user": "alice"}', b'{"format": 9}', b"\xff\xfe", b"[]"])
def test_an_unreadable_record_is_set_aside_and_the_others_load(tmp_path: Path, content: bytes) -> None:
    book = SessionBook(tmp_path / "sessions")
    book.load()
    book.put(session("alice"))
    (tmp_path / "sessions" / "demo.bob.json").write_bytes(content)
    again = SessionBook(tmp_path / "sessions")
    again.load()
    assert again.all() == [session("alice")]
    (aside,) = again.set_aside
    assert aside.startswith("session record demo.bob.json: ")
    assert not (tmp_path / "sessions" / "demo.bob.json").exists()
    (kept,) = (tmp_path / "sessions" / "unusable").iterdir()  # kept for the admin, still root-only
    assert kept.read_bytes() == content and stat.S_IMODE(kept.stat().st_mode) == 0o600
