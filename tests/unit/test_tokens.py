import pytest

from broker.shared.errors import LoginExpired
from broker.web.tokens import TokenSigner


def test_a_token_verifies_for_its_image_and_address_until_it_expires() -> None:
    now = [1000.0]
    signer = TokenSigner(60, clock=lambda: now[0])
    token = signer.issue("Alice_B", "demo", "192.0.2.7")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    grant = signer.verify(token, "demo", "192.0.2.7")
    assert (grant.user, grant.image) == ("Alice_B", "demo")
    now[0] += 60
    signer.verify(token, "demo", "192.0.2.7")
    now[0] += 1
    with pytest.raises(LoginExpired, match="expired"):
        signer.verify(token, "demo", "192.0.2.7")


@pytest.mark.parametrize("image, address", [("other", "192.0.2.7"), ("demo", "192.0.2.8")])
def test_a_token_is_refused_for_another_image_or_address(image: str, address: str) -> None:
    signer = TokenSigner(60)
    token = signer.issue("alice", "demo", "192.0.2.7")
    with pytest.raises(LoginExpired):
        signer.verify(token, image, address)


def test_tokens_of_another_key_or_tampered_ones_are_refused() -> None:
    signer, other = TokenSigner(60), TokenSigner(60)
    token = other.issue("alice", "demo", "a")
    with pytest.raises(LoginExpired):
        signer.verify(token, "demo", "a")
    mine = signer.issue("alice", "demo", "a")
    payload, mac = mine.split(".")
    forged_payload = signer.issue("mallory", "demo", "a").split(".")[0]
    for bad in (f"{forged_payload}.{mac}", payload, "", ".", "x" * 600, f"{payload}.{mac}=="[:-1] + "!"):
        with pytest.raises(LoginExpired):
            signer.verify(bad, "demo", "a")


def test_another_spelling_of_the_same_mac_is_refused() -> None:
    """Found by the fuzzing in test_fuzz.py: a MAC's last base64 character has spare bits, so a changed
    character could decode to the same bytes and verify; the MAC is now compared as text."""
    signer = TokenSigner(60, key=b"k" * 32)
    token = signer.issue("alice", "demo", "192.0.2.7")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 32 bytes are 43 characters; the last carries 4 bits of the MAC and 2 spare ones: flip a spare bit.
    last = alphabet.index(token[-1])
    forged = token[:-1] + alphabet[last ^ 1]
    assert forged != token
    with pytest.raises(LoginExpired):
        signer.verify(forged, "demo", "192.0.2.7")


def test_a_link_is_redeemed_once_and_its_menus_other_links_with_it() -> None:
    signer = TokenSigner(60)
    nonce = signer.new_nonce()
    demo, linux = (signer.issue("alice", image, "a", nonce=nonce) for image in ("demo", "linux"))
    assert signer.redeem(demo, "demo", "a").user == "alice"
    with pytest.raises(LoginExpired, match="already used"):
        signer.redeem(demo, "demo", "a")
    with pytest.raises(LoginExpired, match="already used"):
        signer.redeem(linux, "linux", "a")  # the same login's menu: one boot per login
    other = signer.issue("alice", "demo", "a")  # another login: its own nonce
    assert signer.redeem(other, "demo", "a").user == "alice"


def test_a_refused_link_is_not_spent() -> None:
    signer = TokenSigner(60)
    token = signer.issue("alice", "demo", "a")
    with pytest.raises(LoginExpired):
        signer.redeem(token, "demo", "b")  # from another address: refused, and not spent for its owner
    assert signer.redeem(token, "demo", "a").user == "alice"


def test_spent_links_are_remembered_only_until_they_expire() -> None:
    now = [1000.0]
    signer = TokenSigner(60, clock=lambda: now[0])
    for i in range(5000):  # a boot storm
        signer.redeem(signer.issue(f"user{i}", "demo", "a"), "demo", "a")
    assert signer.spent() == 5000
    now[0] += 61
    signer.redeem(signer.issue("late", "demo", "a"), "demo", "a")
    assert signer.spent() == 1  # the storm's links have expired: forgotten
