"""The benchmark's figures (lab/bench.py's JSON) as Markdown tables, and the issue's targets checked on them."""

from __future__ import annotations

import statistics
from typing import Any

MIB = 2**20


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.0f}"


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile, interpolated between the closest ranks (p99 of 20 samples lies near the top)."""
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(samples), "p99": percentile(samples, 99), "n": len(samples)}


def p50_p99(samples: list[float]) -> str:
    return f"{ms(samples)} / {percentile(samples, 99) * 1000:.0f} ms"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def logins_table(rows: list[dict[str, Any]]) -> list[str]:
    base = rows[0]
    lines = [
        "| targets | login | through the broker (PAM + boot script) p50 / p99 | vs first row | "
        "bootbroker's step p50 / p99 | vs first row | mktgt p50 / p99 | vs first row | mktgt / bootbroker |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for kind in ("warm", "cold"):
            broker, step = row[f"broker_{kind}"], row[f"bootbroker_{kind}"]
            cells = [str(row["targets"]), kind, p50_p99(broker), _vs(broker, base[f"broker_{kind}"]),
                     p50_p99(step), _vs(step, base[f"bootbroker_{kind}"])]
            theirs = row.get(f"mktgt_{kind}")
            if theirs is not None:
                cells += [p50_p99(theirs), _vs(theirs, base.get(f"mktgt_{kind}")),
                          ratio(statistics.median(theirs), statistics.median(step))]
            else:
                cells += ["not measured", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _vs(samples: list[float], base: list[float] | None) -> str:
    return ratio(statistics.median(samples), statistics.median(base)) if base else "-"


def storms_table(storms: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| users at once | served | last script after | per user p50 / p99 | broker CPU | of it PAM (share) | "
        "broker's own CPU / PAM's |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in storms:
        per_user = s["per_user"]
        lines.append(
            f"| {s['users']} | {s['served']} | {s['seconds_to_last']:.1f} s | "
            + (f"{per_user['p50']:.1f} / {per_user['p99']:.1f} s" if per_user else "-")
            + f" | {s['broker_cpu_seconds']:.1f} s | {s['pam_cpu_seconds']:.1f} s "
            + f"({s['pam_cpu_seconds'] / s['broker_cpu_seconds'] * 100:.0f}%) | "
            + (f"{s['broker_overhead'] * 100:.1f}%" if s["broker_overhead"] is not None else "-") + " |"
        )
    return lines


def overlays_table(overlays: dict[str, dict[str, Any]]) -> list[str]:
    sides = list(next(iter(overlays.values())))
    lines = ["| golden image | " + " | ".join(f"{side} time | bytes" for side in sides) + " |",
             "|---|" + "---|---|" * len(sides)]
    for size, row in overlays.items():
        lines.append(f"| {size} sparse | " + " | ".join(
            f"{ms(row[side]['seconds'])} ms | {row[side]['bytes']:,}" for side in sides) + " |")
    small, large = overlays["1GiB"], overlays["100GiB"]
    lines.append("| 100 GiB / 1 GiB | " + " | ".join(
        f"{ratio(statistics.median(large[side]['seconds']), statistics.median(small[side]['seconds']))} | "
        for side in sides) + " |")
    return lines


def io_table(io: dict[str, Any]) -> list[str]:
    """A row per disk: each golden target, then the overlays exported the same way with their share of it."""
    disks = io["disks"]
    workloads = list(next(iter(disks.values())))
    lines = ["| disk | " + " | ".join(workloads) + " |", "|---|" + "---|" * len(workloads)]
    shown: set[str] = set()
    for overlay, golden in io["pairs"]:
        if golden not in shown:
            shown.add(golden)
            lines.append(f"| {golden} | " + " | ".join(
                f"{statistics.median(disks[golden][w]):.1f} MiB/s" for w in workloads) + " |")
        lines.append(f"| {overlay} | " + " | ".join(
            f"{statistics.median(disks[overlay][w]):.1f} MiB/s ({_share(io, overlay, golden, w) * 100:.0f}%)"
            for w in workloads) + " |")
    return lines


def _share(io: dict[str, Any], overlay: str, golden: str, workload: str) -> float:
    disks = io["disks"]
    return float(statistics.median(disks[overlay][workload]) / statistics.median(disks[golden][workload]))


def boots_table(boots: dict[str, Any]) -> list[str]:
    """Each layout's rows: N at once against one alone, store reads against one boot's working set."""
    working_set = boots["working_set"]
    lines = [f"One boot reads {working_set / MIB:.0f} MiB distinct ({boots['iolog']}).", "",
             "| layout | at once | all done | vs one alone | per user p50 / p99 | store read | / working set | "
             "page cache grew |",
             "|---|---|---|---|---|---|---|---|"]
    for layout, rows in boots["layouts"].items():
        alone = rows[0]["seconds_to_last"]
        for row in rows:
            per_user = summary(row["per_user_seconds"])
            lines.append(
                f"| {layout} | {row['users']} | {row['seconds_to_last']:.1f} s | {ratio(row['seconds_to_last'], alone)} | "
                f"{per_user['p50']:.1f} / {per_user['p99']:.1f} s | {row['store_bytes_read'] / MIB:.0f} MiB | "
                f"{ratio(row['store_bytes_read'], working_set)} | {row['page_cache_bytes'] / MIB:.0f} MiB |")
    return lines


def targets(results: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """(what, met?) for each target of the issue the results can speak to; None: not measured."""
    found: list[tuple[str, bool | None]] = []
    rows = results.get("logins", [])
    base, top = (rows[0], rows[-1]) if rows else ({}, {})
    for kind in ("warm", "cold") if len(rows) > 1 else ():
        for key, what in (("broker", "through the broker"), ("bootbroker", "bootbroker's step")):
            r = statistics.median(top[f"{key}_{kind}"]) / statistics.median(base[f"{key}_{kind}"])
            goal = 1.1 if kind == "cold" else 1.2
            found.append((f"{kind} login {what} at {top['targets']} targets = {r:.2f}x at {base['targets']} "
                          f"(target <= {goal}x)", r <= goal))
    for row in rows:
        for kind in ("warm", "cold"):
            if f"mktgt_{kind}" in row:
                r = statistics.median(row[f"mktgt_{kind}"]) / statistics.median(row[f"bootbroker_{kind}"])
                found.append((f"{kind} login at {row['targets']} targets: mktgt / bootbroker = {r:.1f}x "
                              "(target >= 10x)", r >= 10))
    for side, by_size in _by_side(results.get("overlays", {})).items():
        r = statistics.median(by_size["100GiB"]) / statistics.median(by_size["1GiB"])
        found.append((f"overlay creation ({side}) for 100 GiB = {r:.2f}x 1 GiB (target <= 1.5x)", r <= 1.5))
    io: dict[str, Any] = results.get("io") or {}
    for overlay, golden in io.get("pairs", ()):
        for workload in io["disks"][overlay]:
            share = _share(io, overlay, golden, workload)
            floor = 0.9 if "write" in workload else 0.95
            found.append((f"{workload} on {overlay} = {share * 100:.0f}% of {golden} (target >= {floor * 100:.0f}%)",
                          share >= floor))
    for storm in results.get("storms", []):
        found.append((f"storm of {storm['users']}: {storm['served']} served (target: all)",
                      storm["served"] == storm["users"]))
        overhead = storm["broker_overhead"]
        found.append((f"storm of {storm['users']}: broker's own CPU = "
                      + (f"{overhead * 100:.1f}%" if overhead is not None else "-") + " of PAM's (target < 10%)",
                      None if overhead is None else overhead < 0.1))
    boots = results.get("boots")
    for layout, rows in (boots["layouts"].items() if boots else ()):
        alone = rows[0]["seconds_to_last"]
        for row in rows[1:]:
            reads = row["store_bytes_read"] / boots["working_set"]
            found.append((f"{layout}, {row['users']} boots at once: the store read {reads:.2f}x one boot's "
                          "working set (target <= 1.2x)", reads <= 1.2))
            slower = row["seconds_to_last"] / alone
            found.append((f"{layout}, {row['users']} boots at once: all done in {slower:.2f}x the time of one "
                          "(target <= 2x)", slower <= 2))
    return found


def _by_side(overlays: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    sides: dict[str, dict[str, list[float]]] = {}
    for size, row in overlays.items():
        for side, figures in row.items():
            sides.setdefault(side, {})[size] = figures["seconds"]
    return sides


def report(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"Measured {results['date']} in the lab VM ({machine['vm_cpus']} vCPUs, {machine['vm_memory_mb']} MiB, "
        f"{machine['emulation']} emulation) on a {machine['host_cpus']}-core {machine['host_cpu']}"
        + (f"; {results['minutes']:.0f} minutes" if "minutes" in results else "")
        + ". Absolute times are emulated: compare the ratios.",
        "",
    ]
    sections = (
        ("logins", f"Logins ({results['options']['repeat']} samples each):", logins_table),
        ("storms", "Boot storms (every user new: overlay, target and ACL each):", storms_table),
        ("overlays", "Overlay creation (bootbroker: the backend making and attaching one user's overlay; mktgt: "
                     "its whole first login, overlay and target):", overlays_table),
        ("io", "I/O through iSCSI (qemu-img bench in the VM, 16 requests in flight, page cache dropped before "
               "each run; sequential: 1 MiB requests over the whole disk (writes: its first half); scattered: "
               "8,192 requests of 4 KiB spread over it; writes on a fresh overlay each run, a flush every 64 "
               "requests; MiB over the "
               "whole run with its login and last flush; in brackets: the share of the golden target above "
               "it):", io_table),
        ("boots", "Boot storms replaying a real boot (kernel iSCSI sessions, fio; page cache dropped first):",
         boots_table),
    )
    for key, title, table in sections:
        if results.get(key):
            lines += [title, "", *table(results[key]), ""]
    lines += ["Targets:", ""]
    for what, met in targets(results):
        lines.append(f"- {'met' if met else 'not measured' if met is None else 'NOT MET'}: {what}")
    if "consistent" in results:
        lines.append(f"- the store and LIO agree after the run: {'yes' if results['consistent'] else 'NO'}")
    return "\n".join(lines) + "\n"
