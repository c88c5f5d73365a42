import tomllib
from pathlib import Path

import pytest

from broker.shared.config import BackendKind, Portal, load, parse
from broker.shared.errors import ConfigError

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


def test_the_broker_section_has_sane_defaults() -> None:
    data = example()
    data["broker"] = {"url": "https://boot.example.org"}
    broker = parse(data).broker
    assert broker is not None
    assert broker.host == "boot.example.org" and broker.names == ("boot.example.org",)
    assert [(x.host, x.port) for x in broker.listen] == [("0.0.0.0", 443)]
    assert broker.pam_service == "bootbroker" and not broker.insecure_http
    assert str(broker.key) == "/var/lib/bootbroker/tls/broker.key" and broker.key_type == "rsa"
    assert broker.limits.failure_delay == 2.0


def test_a_file_without_a_broker_section_is_enough_for_the_helper() -> None:
    data = example()
    del data["broker"]
    assert parse(data).broker is None


@pytest.mark.parametrize("url, expected", [
    ("http://boot.example.org", "insecure_http = true"),
    ("ftp://boot.example.org", "must be https://HOST"),
    ("https://user:pw@boot.example.org", "without a path, user"),
    ("https://boot.example.org/", "trailing slash"),
    ("https://boot.example.org/path", "without a path"),
    ("https://boot.example.org?x=1", "query"),
    ("https://boot.example.org:99999", "invalid port"),
    ("https://boot.example.org/${x}", "without a path"),
    ("https://bo\"ot.example.org", "cannot go into an iPXE script"),
])
def test_bad_broker_urls_say_what_to_write(url: str, expected: str) -> None:
    data = example()
    data["broker"] = {"url": url}
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert expected in str(info.value)


def test_broker_problems_are_all_reported() -> None:
    data = example()
    data["broker"] = {
        "url": "https://boot.example.org", "listen": ["nowhere"], "names": ["bad name!"],
        "pam_service": "../etc/shadow", "token_ttl": 0, "limits": {"failure_delay": -1, "typo": 1},
        "certificate": "relative.crt", "key_type": "dsa",
    }
    with pytest.raises(ConfigError) as info:
        parse(data)
    text = str(info.value)
    for expected in ("listen: 'nowhere'", "names: 'bad name!'", "pam_service", "token_ttl", "failure_delay",
                     "typo: unknown key", "certificate: must be an absolute path",
                     "key_type: 'dsa' is not one of 'rsa', 'ecdsa'"):
        assert expected in text
    assert len(info.value.problems) == 8


def test_every_image_says_who_may_boot_it() -> None:
    data = example()
    data["images"]["demo"] = {"description": "Demo disk"}
    with pytest.raises(ConfigError, match="say who may boot it"):
        parse(data)
    data["images"]["demo"] = {"description": "Demo disk", "groups": ["students"], "users": ["alice", "bad name"]}
    with pytest.raises(ConfigError, match="users: 'bad name' is not a valid name"):
        parse(data)


@pytest.mark.parametrize("description", ["a $b", "with {braces}", "new\nline", 'a "quote"', "x || reboot", "x" * 81])
def test_image_descriptions_that_a_script_cannot_carry_are_refused(description: str) -> None:
    data = example()
    data["images"]["demo"]["description"] = description
    with pytest.raises(ConfigError, match="description"):
        parse(data)


def netroot_example(**image: str) -> dict:
    """The lab's example with its image booted by netroot, LIO listening on the advertised address itself."""
    data = example()
    data["iscsi"]["portals"] = ["10.0.2.15:3260"]
    data["images"]["demo"].update(boot="netroot", **image)
    return data


def test_netroot_kernel_and_initrd_urls_are_optional_and_go_together() -> None:
    own = parse(netroot_example()).images["demo"]  # the kernel and initrd of each published version
    assert (own.kernel, own.initrd) == ("", "")
    urls = parse(netroot_example(kernel="https://x/vmlinuz", initrd="https://x/initrd.img")).images["demo"]
    assert (urls.kernel, urls.initrd) == ("https://x/vmlinuz", "https://x/initrd.img")
    with pytest.raises(ConfigError, match="kernel and initrd: give both URLs, or neither"):
        parse(netroot_example(kernel="https://x/vmlinuz"))
    with pytest.raises(ConfigError) as info:
        parse(netroot_example(kernel="https://x/vmlinuz", initrd="file:///etc/shadow", cmdline="ip=dhcp $x"))
    assert "initrd: 'file:///etc/shadow'" in str(info.value) and "cmdline" in str(info.value)
    sanboot = example()
    sanboot["images"]["demo"]["kernel"] = "https://x/vmlinuz"
    with pytest.raises(ConfigError, match="only apply with boot"):
        parse(sanboot)


def test_netroot_needs_lio_to_listen_on_its_first_advertised_portal_itself() -> None:
    """dracut discovers (SendTargets) at the portal in netroot= and logs in to the record for that portal; a
    wildcard portal answers discovery with the address the server sees itself at, so through NAT, a port
    forward or a DNS name there would be no record to log in to."""
    data = example()  # portals ["0.0.0.0:3260"], advertise ["10.0.2.15:3260"]: fine for sanboot
    data["images"]["demo"]["boot"] = "netroot"
    with pytest.raises(ConfigError) as info:
        parse(data)
    (problem,) = info.value.problems
    assert problem.startswith("[images.demo] boot = \"netroot\": ")
    for expected in ("10.0.2.15:3260", "discovery", "wildcard", 'add "10.0.2.15:3260" to [iscsi] portals'):
        assert expected in problem, problem
    other_port = netroot_example()
    other_port["iscsi"]["portals"] = ["10.0.2.15:3261"]
    with pytest.raises(ConfigError, match="10.0.2.15:3260"):
        parse(other_port)
    second = netroot_example()
    second["iscsi"]["advertise"] = ["192.0.2.7:3260", "10.0.2.15:3260"]  # only the first is in netroot=
    with pytest.raises(ConfigError, match="192.0.2.7:3260"):
        parse(second)
    assert parse(netroot_example()).iscsi.advertise == (Portal("10.0.2.15", 3260),)
    v6 = netroot_example()
    v6["iscsi"].update(portals=["[2001:db8::1]:3260"], advertise=["[2001:db8:0::1]:3260"])  # one address, two spellings
    assert parse(v6).images["demo"].boot.value == "netroot"
    no_advertise = netroot_example()
    del no_advertise["iscsi"]["advertise"]  # the portals are what is advertised
    assert parse(no_advertise).iscsi.advertise == (Portal("10.0.2.15", 3260),)


def test_store_capacity_settings_have_defaults_and_ranges() -> None:
    store = parse(example()).store
    assert (store.backup_days, store.min_free_percent, store.fill_warn_percent, store.pool_percent) == (30, 5, 80, 75)
    data = example()
    data["store"].update(backup_days=0, min_free_percent=100, fill_warn_percent=0, pool_percent=96)
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "[store] backup_days", "[store] min_free_percent", "[store] fill_warn_percent", "[store] pool_percent",
    ]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0])
def test_numbers_of_seconds_must_be_finite_and_positive(value: float) -> None:
    """TOML has nan and inf; nan slipped through `value <= 0` (found by test_fuzz.py)."""
    data = example()
    data["broker"]["limits"] = {"window": value}
    data["broker"]["request_timeout"] = value
    with pytest.raises(ConfigError) as e:
        parse(data)
    assert len(e.value.problems) == 2


def test_slow_client_defaults() -> None:
    broker = parse(example()).broker
    assert broker is not None and (broker.request_timeout, broker.connections_per_address) == (10.0, 32)


def test_names_too_long_for_an_iqn_or_a_device_mapper_name_are_refused_at_load() -> None:
    """LIO takes IQNs of up to 223 bytes; a login of the longest user name of such an image would fail."""
    long_image = "i" * 60
    data = example()
    data["iscsi"]["domain"] = ".".join(["sub" + "d" * 30] * 2) + ".example.org"  # 79 characters
    data["images"] = {long_image: {"users": ["*"]}, "ok": {"users": ["*"]}}
    with pytest.raises(ConfigError) as info:
        parse(data, "test.toml")
    (problem,) = info.value.problems
    assert problem.startswith(f"[images.{long_image}]") and "223" in problem and "shorten" in problem
    data["iscsi"]["domain"] = "lab.example.org"
    parse(data, "test.toml")  # the same names fit a short domain
    data["store"]["backend"] = "dm-snapshot"  # device-mapper names stop at 127 bytes
    with pytest.raises(ConfigError, match=f"images.{long_image}.*127"):
        parse(data, "test.toml")


def test_the_longest_names_of_an_accepted_configuration_fit() -> None:
    from broker.shared.identifiers import MAX_IQN_LENGTH, storage_object_name, user_label

    data = example()
    data["store"]["backend"] = "dm-snapshot"
    data["iscsi"]["domain"] = "a" * 58 + ".example.org"  # 70 characters: the longest that fits
    data["images"] = {"i" * 47: {"users": ["*"]}}
    config = parse(data, "test.toml")
    label = user_label("A" * 64)
    assert len(config.iscsi.iqn.new_initiator("i" * 47, label)) <= MAX_IQN_LENGTH
    assert len(storage_object_name("i" * 47, label)) <= 127


def test_dm_thin_is_the_default_backend_and_its_device_names_are_checked_too() -> None:
    data = example()
    del data["store"]["backend"]
    assert parse(data).store.backend is BackendKind.DM_THIN
    data["images"] = {"i" * 60: {"users": ["*"]}}
    with pytest.raises(ConfigError, match=r'with backend "dm-thin", its overlays\' device-mapper names would be'):
        parse(data, "test.toml")
