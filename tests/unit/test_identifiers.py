import re

import pytest

from broker.shared.errors import BadIdentifier
from broker.shared.identifiers import (
    CHAP_SECRET_LENGTH,
    IqnScheme,
    check_backup_name,
    check_image_name,
    check_user_name,
    new_chap_secret,
    user_label,
)

BAD_NAMES = ["", "..", "../etc", "a/b", "a\0b", "a\nb", "a\tb", "x" * 10_000, "-lead", ".lead", "a b", "a$b", "a{b}"]


@pytest.mark.parametrize("name", BAD_NAMES + ["Upper", "under_score", "a" * 64])
def test_bad_image_names_are_refused(name: str) -> None:
    with pytest.raises(BadIdentifier, match="image name"):
        check_image_name(name)


@pytest.mark.parametrize("value", [None, 5, ["demo"], {"a": 1}])
def test_non_string_identifiers_are_refused(value: object) -> None:
    with pytest.raises(BadIdentifier):
        check_image_name(value)
    with pytest.raises(BadIdentifier):
        check_user_name(value)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_user_names_are_refused(name: str) -> None:
    with pytest.raises(BadIdentifier, match="user name"):
        check_user_name(name)


def test_error_message_quotes_a_long_name_shortly() -> None:
    with pytest.raises(BadIdentifier) as info:
        check_user_name("x" * 10_000)
    assert len(info.value.message) < 200


@pytest.mark.parametrize("user", ["alice", "bob.smith", "s1234", "a-b"])
def test_label_of_a_plain_name_is_the_name(user: str) -> None:
    assert user_label(user) == user


@pytest.mark.parametrize("user", ["Alice", "bob_smith", "jo@example.org", "_svc"])
def test_label_of_other_names_is_iqn_safe_and_hashed(user: str) -> None:
    label = user_label(user)
    assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*--[0-9a-f]{10}", label), label


def test_labels_do_not_collide() -> None:
    users = ["Alice", "alice", "ALICE", "al_ice", "al-ice", "al.ice", "al@ice"]
    users.append(user_label("Alice"))  # a name that imitates another's mapped label
    labels = [user_label(u) for u in users]
    assert len(set(labels)) == len(users)


def test_iqn_scheme_names_targets_and_fresh_initiators() -> None:
    scheme = IqnScheme("2026-11", "lab.example.org")
    assert scheme.target("demo", "alice") == "iqn.2026-11.org.example.lab:demo.alice"
    first, second = scheme.new_initiator("demo", "alice"), scheme.new_initiator("demo", "alice")
    assert first != second
    assert first.startswith("iqn.2026-11.org.example.lab:client.demo.alice.")


def test_chap_secrets_are_fresh_and_alphanumeric() -> None:
    secrets = {new_chap_secret() for _ in range(200)}
    assert len(secrets) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9]+", s) and len(s) == CHAP_SECRET_LENGTH for s in secrets)
    assert 16 <= CHAP_SECRET_LENGTH <= 24


@pytest.mark.parametrize("name", ["20261123T083000", "20261123T083000.2"])
def test_backup_names_the_store_makes_are_accepted(name: str) -> None:
    assert check_backup_name(name) == name


@pytest.mark.parametrize("name", ["../x", "20261123T083000/..", "20261123", "20261123T083000.0", "", None, 5, "x" * 99])
def test_anything_else_is_not_a_backup_name(name: object) -> None:
    with pytest.raises(BadIdentifier, match="bootbroker backups"):
        check_backup_name(name)
