import stat
from pathlib import Path

from broker.state import BootSession, SessionBook


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
