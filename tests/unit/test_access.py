"""Who may boot which image, and when group membership must be looked up to decide it."""

from __future__ import annotations

import os
import pwd

from broker.shared.access import NssDirectory, may_boot, needs_groups, permitted_images

from .webfakes import broker_config

IMAGES = broker_config({
    "open": {"description": "Everyone", "users": ["*"]},
    "named": {"description": "Alice only", "users": ["alice"]},
    "staff": {"description": "Staff", "groups": ["staff"]},
    "mixed": {"description": "Bob or staff", "users": ["bob"], "groups": ["staff"]},
}).images


def test_names_and_groups_admit() -> None:
    assert may_boot(IMAGES["open"], "anyone", frozenset())
    assert may_boot(IMAGES["named"], "alice", frozenset()) and not may_boot(IMAGES["named"], "bob", frozenset())
    assert may_boot(IMAGES["staff"], "carol", frozenset({"staff"}))
    assert not may_boot(IMAGES["staff"], "carol", frozenset({"students"}))
    assert [i.name for i in permitted_images(IMAGES, "bob", frozenset())] == ["open", "mixed"]


def test_groups_are_needed_only_where_a_group_could_admit_someone_not_named() -> None:
    assert not needs_groups([IMAGES["open"], IMAGES["named"]], "carol")  # no groups: names decide
    assert needs_groups([IMAGES["staff"]], "carol")
    assert not needs_groups([IMAGES["mixed"]], "bob")  # named: admitted whatever his groups
    assert needs_groups([IMAGES["mixed"]], "carol")
    assert needs_groups(IMAGES.values(), "alice")
    assert not needs_groups([], "alice")


def test_the_brokers_directory_gives_the_accounts_own_name() -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    accounts = NssDirectory()
    assert accounts.canonical(me) == me
    assert accounts.canonical("bootbroker-no-such-user") is None
    assert accounts.groups_of(me)
