import pytest

from broker.shared.config import LoginLimits
from broker.web.limiter import SWEEP_EVERY, WAIT, LoginLimiter, address_key

LIMITS = LoginLimits(user_failures=3, address_failures=5, window=60.0, failure_delay=1.0)


def make() -> tuple[LoginLimiter, list[float]]:
    now = [0.0]
    return LoginLimiter(LIMITS, clock=lambda: now[0]), now


def test_a_user_is_refused_after_the_limit_until_the_oldest_failure_leaves_the_window() -> None:
    limiter, now = make()
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert limiter.reserve("alice", "a1") == 0
        limiter.failed("alice", "a1")
    assert limiter.retry_after("alice", "a2") == 40.0  # from any address
    now[0] = 60.0
    assert limiter.retry_after("alice", "a2") == 0


def test_an_address_is_refused_after_its_limit_whatever_the_user() -> None:
    limiter, _ = make()
    for i in range(5):
        limiter.reserve(f"user{i}", "a1")
        limiter.failed(f"user{i}", "a1")
    assert limiter.retry_after("someone-else", "a1") == 60.0
    assert limiter.retry_after("someone-else", "a2") == 0


def test_success_clears_the_user_but_not_the_address() -> None:
    limiter, _ = make()
    for user in ("alice", "alice", "bob", "bob"):
        assert limiter.reserve(user, "a1") == 0
        limiter.failed(user, "a1")
    assert limiter.reserve("alice", "a1") == 0
    limiter.succeeded("alice", "a1")
    assert limiter.retry_after("alice", "a9") == 0
    for _ in range(3):  # alice's two failures are gone: three more before her limit
        assert limiter.reserve("alice", "a9") == 0
        limiter.released("alice", "a9")
    assert limiter.reserve("carol", "a1") == 0
    limiter.failed("carol", "a1")
    assert limiter.retry_after("dave", "a1") == 60.0  # a1 has 5 failures: alice's success did not clear them


def test_memory_stays_bounded_under_a_spray_of_names() -> None:
    limiter, now = make()
    for i in range(SWEEP_EVERY):
        limiter.reserve(f"spray{i}", f"10.0.{i // 256}.{i % 256}")
        limiter.failed(f"spray{i}", f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) > 0
    now[0] = 1000.0
    for i in range(SWEEP_EVERY):
        limiter.reserve("late", "10.9.9.9")
        limiter.failed("late", "10.9.9.9")
    assert len(limiter) == 2  # only the live keys are left


def test_attempts_in_flight_count_against_the_user_and_the_address() -> None:
    """32 guesses for one user at once: each reserves before PAM is asked, so only the limit get through
    however long PAM takes to answer (issue 15: every one of them passed a check made before the await)."""
    limiter, _ = make()
    admitted = [limiter.reserve("alice", "a1") == 0 for _ in range(32)]
    assert admitted.count(True) == LIMITS.user_failures
    # The user is full from any address while PAM thinks: wait for one to end (they may all succeed).
    assert limiter.retry_after("alice", "a2") == WAIT
    for i in range(LIMITS.address_failures - LIMITS.user_failures):
        assert limiter.reserve(f"other{i}", "a1") == 0
    assert limiter.reserve("carol", "a1") == WAIT  # and the address is full of attempts in flight
    for i in range(LIMITS.user_failures):
        limiter.failed("alice", "a1")
    assert limiter.reserve("alice", "a2") == 60.0  # failures refuse; only they do


def test_a_reservation_becomes_a_failure_or_is_given_back() -> None:
    limiter, now = make()
    assert limiter.reserve("alice", "a1") == 0
    limiter.failed("alice", "a1")  # at 0
    assert limiter.reserve("alice", "a1") == 0
    limiter.released("alice", "a1")  # PAM was never asked (busy): nothing recorded
    now[0] = 10.0
    for _ in range(2):
        assert limiter.reserve("alice", "a1") == 0
    # one failure and two in flight: wait for an attempt to end, nothing reserved
    assert limiter.reserve("alice", "a1") == WAIT
    limiter.succeeded("alice", "a1")  # one in flight succeeds: the user's failures are cleared
    assert limiter.reserve("alice", "a1") == 0
    limiter.failed("alice", "a1")
    limiter.failed("alice", "a1")  # the last two in flight fail, at 10
    assert limiter.retry_after("alice", "a1") == 0  # two failures: below the limit of 3
    assert limiter.reserve("alice", "a1") == 0
    assert limiter.retry_after("alice", "a1") == WAIT  # two failures and one in flight: until it ends
    now[0] = 70.0
    limiter.released("alice", "a1")
    assert limiter.retry_after("alice", "a1") == 0
    assert len(limiter) == 0  # nothing in flight, nothing in the window: no key kept


def test_a_user_name_is_one_key_whatever_its_case() -> None:
    limiter, _ = make()
    for name in ("alice", "Alice", "ALICE"):
        assert limiter.reserve(name, "a1") == 0
        limiter.failed(name, "a1")
    assert limiter.reserve("aLiCe", "a2") == 60.0


@pytest.mark.parametrize("first, second", [
    ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"),  # one /64: one client
    ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped IPv6 is the IPv4 address
])
def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4(first: str, second: str) -> None:
    limiter, _ = make()
    for i in range(LIMITS.address_failures):
        assert limiter.reserve(f"guess{i}", first) == 0
        limiter.failed(f"guess{i}", first)
    assert limiter.reserve("bob", second) == 60.0


def test_addresses_outside_the_64_or_another_ipv4_are_other_clients() -> None:
    limiter, _ = make()
    for i in range(LIMITS.address_failures):
        limiter.reserve(f"guess{i}", "2001:db8:1:2::1")
        limiter.failed(f"guess{i}", "2001:db8:1:2::1")
    assert limiter.reserve("bob", "2001:db8:1:3::1") == 0
    assert limiter.reserve("carol", "192.0.2.8") == 0
    assert address_key("fe80::1%eth0") == address_key("fe80::2%eth1") == "fe80::/64"
    assert address_key("unknown") == "unknown"
