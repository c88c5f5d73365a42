"""The broker's metrics in Prometheus' text format (version 0.0.4): counters and a histogram kept in memory,
plus the helper's gauges (sessions, overlays, backups, free bytes) read from its `health` at scrape time.
PAM's share of the broker's CPU is the ratio of bootbroker_pam_cpu_seconds_total to process_cpu_seconds_total.

No names, addresses or secrets: only counts and times.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from typing import Any

from ..shared.identifiers import BOOT_FILES

# ensure_session as the broker waits for it: a cold start makes an overlay and a target
SESSION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# failed: unknown user or wrong password; limited: too many failures; busy: PAM's queue was full, PAM not asked
LOGIN_RESULTS = ("ok", "failed", "limited", "busy")
# a netroot script's kernel and initrd: refused (a forged, expired or foreign file link), failed (the helper)
BOOT_FILE_RESULTS = ("ok", "refused", "failed")
# the helper's health -> (metric name, help)
HELPER_GAUGES = {
    "sessions": ("bootbroker_live_sessions", "Live boot sessions (users with an ACL on their target)."),
    "overlays": ("bootbroker_overlays", "User overlays in the store."),
    "backups": ("bootbroker_backups", "Overlays kept as backups by reset, rebase and restore."),
    "store_free_bytes": ("bootbroker_store_free_bytes", "Free bytes in the store's filesystem."),
}


class Metrics:
    def __init__(self) -> None:
        self.logins: Counter[str] = Counter()
        self.session_failures = 0
        self._bucket_counts = [0] * (len(SESSION_BUCKETS) + 1)  # the last: above every bucket
        self._session_sum = 0.0
        self.pam_conversations = 0
        self.pam_seconds = 0.0
        self.pam_cpu_seconds = 0.0
        self.boot_files: Counter[tuple[str, str]] = Counter()  # (file, result)
        self.boot_file_bytes = 0

    def boot_file(self, name: str, result: str) -> None:
        assert name in BOOT_FILES and result in BOOT_FILE_RESULTS, (name, result)
        self.boot_files[name, result] += 1

    def boot_file_sent(self, size: int) -> None:
        self.boot_file_bytes += size

    def login(self, result: str) -> None:
        assert result in LOGIN_RESULTS, result
        self.logins[result] += 1

    def session_started(self, seconds: float) -> None:
        self._bucket_counts[bisect.bisect_left(SESSION_BUCKETS, seconds)] += 1
        self._session_sum += seconds

    def session_failed(self) -> None:
        self.session_failures += 1

    def pam_conversation(self, seconds: float, cpu_seconds: float) -> None:
        self.pam_conversations += 1
        self.pam_seconds += seconds
        self.pam_cpu_seconds += cpu_seconds

    def render(self, helper: dict[str, Any] | None) -> str:
        """The exposition text; `helper` is the helper's health, or None if it did not answer."""
        lines = [
            "# HELP bootbroker_logins_total Logins at the broker by result.",
            "# TYPE bootbroker_logins_total counter",
            *(f'bootbroker_logins_total{{result="{r}"}} {self.logins[r]}' for r in LOGIN_RESULTS),
            "# HELP bootbroker_ensure_session_seconds Time the helper took to start a boot session.",
            "# TYPE bootbroker_ensure_session_seconds histogram",
        ]
        total = 0
        for bound, count in zip(SESSION_BUCKETS, self._bucket_counts):
            total += count
            lines.append(f'bootbroker_ensure_session_seconds_bucket{{le="{bound}"}} {total}')
        total += self._bucket_counts[-1]
        lines += [
            f'bootbroker_ensure_session_seconds_bucket{{le="+Inf"}} {total}',
            f"bootbroker_ensure_session_seconds_sum {self._session_sum:.6f}",
            f"bootbroker_ensure_session_seconds_count {total}",
            "# HELP bootbroker_ensure_session_failures_total Boot sessions the helper could not start.",
            "# TYPE bootbroker_ensure_session_failures_total counter",
            f"bootbroker_ensure_session_failures_total {self.session_failures}",
            "# HELP bootbroker_pam_conversations_total PAM conversations (logins that reached PAM).",
            "# TYPE bootbroker_pam_conversations_total counter",
            f"bootbroker_pam_conversations_total {self.pam_conversations}",
            "# HELP bootbroker_pam_seconds_total Time spent in PAM conversations (not waiting for a PAM thread).",
            "# TYPE bootbroker_pam_seconds_total counter",
            f"bootbroker_pam_seconds_total {self.pam_seconds:.6f}",
            "# HELP bootbroker_pam_cpu_seconds_total CPU time of the broker's PAM threads in conversations.",
            "# TYPE bootbroker_pam_cpu_seconds_total counter",
            f"bootbroker_pam_cpu_seconds_total {self.pam_cpu_seconds:.6f}",
            "# HELP bootbroker_boot_files_total Kernels and initrds asked for by netroot workstations, by result.",
            "# TYPE bootbroker_boot_files_total counter",
            *(f'bootbroker_boot_files_total{{file="{f}",result="{r}"}} {self.boot_files[f, r]}'
              for f in BOOT_FILES for r in BOOT_FILE_RESULTS),
            "# HELP bootbroker_boot_file_bytes_total Bytes of kernels and initrds sent in full.",
            "# TYPE bootbroker_boot_file_bytes_total counter",
            f"bootbroker_boot_file_bytes_total {self.boot_file_bytes}",
            "# HELP process_cpu_seconds_total CPU time of the broker's process, all threads (user and system).",
            "# TYPE process_cpu_seconds_total counter",
            f"process_cpu_seconds_total {time.process_time():.6f}",
            "# HELP bootbroker_helper_up Whether the helper answered this scrape.",
            "# TYPE bootbroker_helper_up gauge",
            f"bootbroker_helper_up {0 if helper is None else 1}",
        ]
        for key, (name, text) in HELPER_GAUGES.items():
            if helper is not None and isinstance(helper.get(key), int):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {helper[key]}"]
        return "\n".join(lines) + "\n"
