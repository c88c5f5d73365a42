import tomllib
from pathlib import Path

import pytest

from broker.config import BackendKind, Portal, load, parse
from broker.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "examples" / "lab.toml"


def example() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def test_the_lab_example_loads() -> None:
    config = load(EXAMPLE)
    assert config.store.backend is BackendKind.REFLINK
    assert config.iscsi.portals == (Portal("0.0.0.0", 3260),)
    assert config.iscsi.advertise == (Portal("10.0.2.15", 3260),)
    assert config.iscsi.iqn.prefix == "iqn.2026-11.org.example.lab"
    assert set(config.images) == {"demo"}


def test_every_problem_is_reported_at_once() -> None:
    data = example()
    data["store"]["backend"] = "zfs"
    data["store"]["path"] = "relative/path"
    data["iscsi"]["domain"] = "Not A Domain"
    data["iscsi"]["date"] = "2026-13"
    data["iscsi"]["portals"] = ["nonsense"]
    data["helper"]["sockt"] = "/typo"
    with pytest.raises(ConfigError) as info:
        parse(data, "test.toml")
    text = str(info.value)
    for expected in ("backend", "relative/path", "domain", "date", "nonsense", "sockt: unknown key"):
        assert expected in text
    assert len(info.value.problems) == 6


def test_a_wildcard_portal_needs_advertised_addresses() -> None:
    data = example()
    del data["iscsi"]["advertise"]
    with pytest.raises(ConfigError, match="advertise: required"):
        parse(data)


def test_advertised_portals_must_be_real_addresses() -> None:
    data = example()
    data["iscsi"]["advertise"] = ["0.0.0.0:3260"]
    with pytest.raises(ConfigError, match="wildcard"):
        parse(data)


def test_images_are_required_and_named_validly() -> None:
    data = example()
    data["images"] = {"Bad_Name": {}}
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert any("Bad_Name" in p for p in info.value.problems)
    assert any("at least one image" in p for p in info.value.problems)


def test_missing_and_broken_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[store\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(broken)


def test_ipv6_portal() -> None:
    data = example()
    data["iscsi"]["advertise"] = ["[2001:db8::1]:3260"]
    assert str(parse(data).iscsi.advertise[0]) == "[2001:db8::1]:3260"
