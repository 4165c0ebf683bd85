"""The one table of `./dev bench`: per test each contender's median and its ratio against direct, the goal of
issue 12 and whether the host meets it; and the JSON written next to it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

CONTENDERS = ("direct", "host-path", "host-origin", "nginx", "jsp")
HOSTS = ("host-path", "host-origin")


@dataclass(frozen=True)
class Goal:
    text: str
    met: Callable[[float, float], bool]  # (the host's median, direct's median) -> met?


GOALS: dict[str, Goal] = {
    "tiny GET c1 req/s": Goal(">=0.5x direct", lambda h, d: h >= 0.5 * d),
    "tiny GET c8 req/s": Goal(">=0.5x direct", lambda h, d: h >= 0.5 * d),
    "tiny GET c1 p50 ms": Goal("<=direct+0.5 ms", lambda h, d: h - d <= 0.5),
    "tiny GET c32 non-2xx": Goal("0", lambda h, d: h == 0),
    "tiny GET c256 non-2xx": Goal("0", lambda h, d: h == 0),
    "1 MiB GET c8 req/s": Goal(">=0.6x direct", lambda h, d: h >= 0.6 * d),
    "1 MiB POST c8 req/s": Goal(">=0.9x direct", lambda h, d: h >= 0.9 * d),
    "SSE event ms": Goal("<=direct+1 ms", lambda h, d: h - d <= 1.0),
    "spawn-to-ready ms": Goal("<=1.2x bare", lambda h, d: h <= 1.2 * d),
    "kill-to-serving ms": Goal("<=250 ms", lambda h, d: h <= 250),
    "cold start ms": Goal("<=250 ms", lambda h, d: h <= 250),
    "per-plugin PSS MiB": Goal("<=bare+3 MiB", lambda h, d: h <= d + 3),
    "host idle PSS MiB": Goal("<=60 MiB", lambda h, d: h <= 60),
    "install warm s": Goal("<=1 s", lambda h, d: h <= 1),
    "100 plugins: answered": Goal("all 100", lambda h, d: h == 100),
    # another plugin's p50 while benchapp is overloaded, minus its p50 on the otherwise idle host
    "neighbour added p50 ms": Goal("<=1 ms", lambda h, d: h <= 1.0),
}


def median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def rows(samples: dict[str, dict[str, list[float]]]) -> list[dict[str, object]]:
    """One row per test: medians per contender, ratios against direct, the goal and its verdict per host."""
    out = []
    for test, per in samples.items():
        med = {c: median(per[c]) for c in CONTENDERS if per.get(c)}
        base = med.get("direct", float("nan"))
        ratio = {c: (v / base if base and not math.isnan(base) else float("nan")) for c, v in med.items()}
        goal = GOALS.get(test)
        verdict = {h: goal.met(med[h], base) for h in HOSTS if goal and h in med and not math.isnan(med[h])} \
            if goal else {}
        out.append({"test": test, "median": med, "ratio": ratio, "n": {c: len(per[c]) for c in med},
                    "goal": goal.text if goal else "", "met": verdict})
    return out


def _num(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def cell(row: dict[str, object], c: str) -> str:
    med, ratio = row["median"], row["ratio"]
    assert isinstance(med, dict) and isinstance(ratio, dict)
    if c not in med:
        return "-"
    if c == "direct" or str(row["test"]).endswith("non-2xx") or math.isnan(ratio.get(c, float("nan"))):
        return _num(med[c])
    return f"{_num(med[c])} ({ratio[c]:.2f}x)"


def table(table_rows: list[dict[str, object]], skipped: dict[str, str]) -> str:
    shown = [c for c in CONTENDERS if c not in skipped]
    head = ["test", *shown, "goal", "host meets it?"]
    lines = []
    for row in table_rows:
        met = row["met"]
        assert isinstance(met, dict)
        verdict = " ".join(f"{h.removeprefix('host-')}:{'PASS' if ok else 'FAIL'}" for h, ok in met.items())
        lines.append([str(row["test"]), *(cell(row, c) for c in shown), str(row["goal"]), verdict])
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*ln) for ln in lines]
    out += [f"{c}: skipped: {why}" for c, why in skipped.items()]
    return "\n".join(out)
