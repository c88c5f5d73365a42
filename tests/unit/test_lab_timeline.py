"""lab/timeline.py: when each boot phase first showed on a console, after a given position."""

from __future__ import annotations

import time

from lab.timeline import Timeline


def test_milestones_are_timed_in_order_and_only_after_the_start_position() -> None:
    console = ["old: Registered SAN device 0x80\n"]
    timeline = Timeline(lambda: "".join(console), [("login", "Registered SAN device"), ("grub", "GNU GRUB"),
                                                   ("os", "multi-user")], after=len(console[0]))
    timeline.start()
    time.sleep(0.6)
    assert timeline.seen == {}  # the text before `after` does not count
    console.append("Registered SAN device 0x80\n")
    time.sleep(0.6)
    console.append("GNU GRUB\nmulti-user\n")
    timeline.stop()  # the last milestone, shown just before stop(), is still seen
    names = [name for name, _, _ in timeline.phases()]
    assert names == ["login", "grub", "os"]
    at = dict((name, seconds) for name, seconds, _ in timeline.phases())
    assert 0.5 < at["login"] < at["grub"] <= at["os"]
    assert "grub" in timeline.table("phases")
