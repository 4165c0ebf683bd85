"""`host install` of a Flask-only plugin, two hosts side by side: each its own home, warmed by one cold install,
then warm installs of fresh copies alternating between the hosts round by round. Per phase, the wall time from
one progress line to the next (the phase a line announces lasts until the next line; "start" is the interpreter
and the CLI's imports, "exit" from the last line to the process's end).

    python -m bench.install_ab --host A=/work/main/.venv/bin/python --host B=.venv/bin/python --rounds 7

Each --host is a Python whose `-m host` is the host to measure (e.g. another worktree's .venv). Medians out,
and JSON with every sample when --json is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

TINY = Path(__file__).resolve().parent / "plugins" / "tiny"
# a progress line's phase: its text with the parts that change from install to install taken out
_VARIABLE = re.compile(r"tiny\d+|/tmp/\S+|\d+(\.\d+)?s\b|\d+ files \(\d+ KiB\)")


def _copy(tmp: Path, i: int) -> Path:
    src = tmp / "src" / f"tiny{i}"
    shutil.copytree(TINY, src)
    toml = src / "plugin.toml"
    toml.write_text(re.sub(r'^name = "tiny"', f'name = "tiny{i}"', toml.read_text(), flags=re.M))
    return src


def install(python: str, home: Path, src: Path) -> tuple[float, dict[str, float]]:
    """Total wall time and the time of each phase (progress lines starting with ==>)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "host", "--home", str(home), "install", str(src), "--yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            cwd=home.parent,  # not a source tree: `-m host` would import that tree's host
                            env={k: v for k, v in os.environ.items() if not k.startswith("HOST_")})
    assert proc.stderr is not None
    phases: dict[str, float] = {}
    last, phase = t0, "start"
    for line in proc.stderr:
        if not line.startswith("==> "):
            continue
        now = time.perf_counter()
        phases[phase] = phases.get(phase, 0.0) + now - last
        last, phase = now, _VARIABLE.sub("*", line[4:].strip())[:70]
    if proc.wait() != 0:
        raise SystemExit(f"{python}: install of {src} failed ({proc.returncode})")
    end = time.perf_counter()
    phases[phase] = phases.get(phase, 0.0) + end - last
    phases["exit"] = phases.pop(phase)  # the last line is printed at the very end
    return end - t0, phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", action="append", required=True, metavar="LABEL=PYTHON")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    hosts = {label: os.path.abspath(py) for label, py in (h.split("=", 1) for h in args.host)}
    tmp = Path(tempfile.mkdtemp(prefix="ph-install-ab-", dir="/tmp"))
    out: dict[str, dict[str, object]] = {label: {"cold": None, "cold phases": {}, "warm": [],
                                                       "phases": []} for label in hosts}
    try:
        n = 0
        for label, python in hosts.items():
            out[label]["cold"], out[label]["cold phases"] = install(python, tmp / label, _copy(tmp, n))
            n += 1
        for r in range(args.rounds):
            order = list(hosts.items()) if r % 2 == 0 else list(reversed(hosts.items()))
            for label, python in order:
                total, phases = install(python, tmp / label, _copy(tmp, n))
                n += 1
                out[label]["warm"].append(total)  # type: ignore[attr-defined]
                out[label]["phases"].append(phases)  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    for label, res in out.items():
        warm: list[float] = res["warm"]  # type: ignore[assignment]
        print(f"\n{label}: cold {res['cold']:.2f} s, warm median {statistics.median(warm):.2f} s "
              f"({' '.join(f'{w:.2f}' for w in warm)})")
        samples: list[dict[str, float]] = res["phases"]  # type: ignore[assignment]
        cold: dict[str, float] = res["cold phases"]  # type: ignore[assignment]
        names = list(dict.fromkeys([*cold, *(k for s in samples for k in s)]))
        print("     cold      warm  (ms; warm: medians)")
        for name in names:
            vals = [s.get(name, 0.0) for s in samples]
            print(f"  {cold.get(name, 0.0) * 1000:7.0f}   {statistics.median(vals) * 1000:7.0f}  {name}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
