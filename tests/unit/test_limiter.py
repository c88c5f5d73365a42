from broker.config import LoginLimits
from broker.limiter import SWEEP_EVERY, LoginLimiter

LIMITS = LoginLimits(user_failures=3, address_failures=5, window=60.0, failure_delay=1.0)


def make() -> tuple[LoginLimiter, list[float]]:
    now = [0.0]
    return LoginLimiter(LIMITS, clock=lambda: now[0]), now


def test_a_user_is_refused_after_the_limit_until_the_oldest_failure_leaves_the_window() -> None:
    limiter, now = make()
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert limiter.retry_after("alice", "a1") == 0
        limiter.failed("alice", "a1")
    assert limiter.retry_after("alice", "a2") == 40.0  # from any address
    now[0] = 60.0
    assert limiter.retry_after("alice", "a2") == 0


def test_an_address_is_refused_after_its_limit_whatever_the_user() -> None:
    limiter, _ = make()
    for i in range(5):
        limiter.failed(f"user{i}", "a1")
    assert limiter.retry_after("someone-else", "a1") == 60.0
    assert limiter.retry_after("someone-else", "a2") == 0


def test_success_clears_the_user_but_not_the_address() -> None:
    limiter, _ = make()
    for _ in range(3):
        limiter.failed("alice", "a1")
    limiter.failed("bob", "a1")
    limiter.failed("bob", "a1")
    limiter.succeeded("alice")
    assert limiter.retry_after("alice", "a9") == 0
    assert limiter.retry_after("carol", "a1") == 60.0  # a1 has 5 failures


def test_memory_stays_bounded_under_a_spray_of_names() -> None:
    limiter, now = make()
    for i in range(SWEEP_EVERY):
        limiter.failed(f"spray{i}", f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) > 0
    now[0] = 1000.0
    for i in range(SWEEP_EVERY):
        limiter.failed("late", "10.9.9.9")
    assert len(limiter) == 2  # only the live keys are left
