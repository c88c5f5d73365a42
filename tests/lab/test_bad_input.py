"""The bad-input corpora replayed against the real broker, helper and LIO in the lab VM.

tests/bad_requests.py (HTTP) goes to the broker over plain HTTP (the lab-only switch: the corpus is raw
bytes) through qemu's forwarding; tests/bad_helper_requests.py goes to the helper's Unix socket from inside
the VM, as root. Every case gets its expected answer, both services stay up and answer a good request
afterwards, and nothing changes in the store or in LIO.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from lab.broker import BrokerDeployment, running
from lab.vm import Lab
from tests import bad_requests

STORE = "/srv/btrfs/bootbroker-bad-input"
REQUEST_TIMEOUT = 10.0  # the broker's default [broker] request_timeout: silent connections wait this long


@pytest.fixture(scope="module")
def broker(lab: Lab) -> Iterator[BrokerDeployment]:
    lab.run(["rm", "-rf", STORE])
    with running(lab, STORE, insecure_http=True, publish=lambda h: h.publish_random_golden("demo")) as deployed:
        yield deployed


def test_the_http_corpus_changes_nothing_and_the_broker_stays_up(broker: BrokerDeployment) -> None:
    helper = broker.helper
    menu = broker.login("student1")
    link = next(line for line in menu.body.splitlines() if "/boot/demo.ipxe?token=" in line)
    token_link = "/boot/demo.ipxe?token=" + link.split("?token=", 1)[1].split()[0]
    before = helper.snapshot()
    sessions = helper.cli_json("sessions")
    # Every request of the lab reaches the VM from qemu's 10.0.2.2: a case needing another source address
    # cannot be made here (tests/unit/test_bad_requests.py has it).
    cases = [c for c in bad_requests.CASES + bad_requests.token_cases(token_link, "other")
             if not c.from_other_address]
    wrong = {}
    for case in cases:
        ok, got = bad_requests.check(case, broker.lab.http_port, timeout=REQUEST_TIMEOUT + 20, limited_ok=True)
        if not ok:
            wrong[case.name] = (case.expect, got)
    assert wrong == {}
    print(f"\nBAD INPUT: {len(cases)} HTTP cases against the real broker, each answered as expected")
    assert helper.snapshot() == before  # no overlay, target, ACL or record made or changed
    assert helper.cli_json("sessions") == sessions
    assert broker.process is not None and broker.lab.wait(broker.process, timeout=0).rc is None
    assert broker.boot(broker.login("student1").body).status == 200  # and it still serves


HELPER_REPLAY = """
import json, sys
from tests import bad_helper_requests as corpus
results = {}
for case in corpus.PROTOCOL_CASES + corpus.ARGUMENT_CASES + [corpus.SILENT, corpus.GOOD]:
    ok, got = corpus.check(case, sys.argv[1], timeout=float(sys.argv[2]))
    results[case.name] = [ok, case.expect, got]
print(json.dumps(results))
"""


def test_the_helper_protocol_corpus_changes_nothing_and_the_helper_stays_up(broker: BrokerDeployment) -> None:
    helper = broker.helper
    before = helper.snapshot()
    done = broker.lab.run([str(broker.lab.python), "-c", HELPER_REPLAY, helper.socket, "45"],
                          cwd=str(broker.lab.repo), timeout=900)
    results = json.loads(done.stdout)
    assert {name: r for name, r in results.items() if not r[0]} == {}
    print(f"\nBAD INPUT: {len(results)} helper protocol cases against the real helper, each answered as expected")
    assert helper.snapshot() == before
    assert helper.process is not None and broker.lab.wait(helper.process, timeout=0).rc is None
    assert helper.cli_json("health")["backend"] == "reflink"
