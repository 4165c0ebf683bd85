"""`./dev bench` end to end in its smallest configuration (--smoke: one round, half-second loads, no installs
but the bench plugin's), so the command cannot rot: every contender it builds answers, every test yields a
figure, the table and the JSON come out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import REPO

HOSTS = ("host-path", "host-origin")


def test_bench_smoke_prints_one_table_and_writes_json(tmp_path: Path) -> None:
    # nginx and jupyter-server-proxy are optional contenders (apt, a venv of their own): not built here.
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--loadgen", "python",
                           "--only", "direct,host-path,host-origin", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=280, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "test" in out and "goal" in out and "host meets it?" in out
    assert "nginx: skipped: not asked for (--only)" in out
    [result] = tmp_path.glob("*.json")
    run = json.loads(result.read_text())
    assert run["mode"] == "smoke" and run["generator"] == "python"
    rows = {r["test"]: r for r in run["rows"]}
    for test in ("tiny GET c1 req/s", "tiny GET c1 p50 ms", "tiny GET c32 non-2xx", "1 MiB POST c8 req/s",
                 "tiny GET c1 CPU us/req", "SSE event ms", "WebSocket echo ms"):
        assert set(rows[test]["median"]) == {"direct", *HOSTS}, (test, rows[test])
    assert rows["tiny GET c1 req/s"]["median"]["direct"] > 0
    assert rows["tiny GET c1 non-2xx"]["median"]["direct"] == 0
    assert set(rows["tiny GET c1 req/s"]["met"]) == set(HOSTS)  # a goal row: a verdict for each host front
    for test in ("spawn-to-ready ms", "per-plugin PSS MiB"):  # the bare baseline next to the sandboxed figure
        assert set(rows[test]["median"]) == {"direct", "host-path"}, rows[test]
    for test in ("kill-to-serving ms", "cold start ms", "cold start x1 at once ms", "host idle PSS MiB"):
        assert rows[test]["median"]["host-path"] > 0, rows[test]
    assert "kill-to-serving ms" in out and "<=250 ms" in out
    # fairness: another plugin's latency while benchapp is overloaded, against the same plugin on an idle host
    assert set(rows["neighbour added p50 ms"]["met"]) == {"host-path"}, rows["neighbour added p50 ms"]
