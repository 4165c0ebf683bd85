"""The benchmark's arithmetic: wrk's report parsed, medians and ratios against direct, goals judged."""

from __future__ import annotations

import math

from bench import loadgen, report

WRK = """Running 1s test @ http://127.0.0.1:4000/ping
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    28.11ms    5.02ms  61.00ms   80.00%
    Req/Sec     1.14k   102.00     1.30k    70.00%
  Latency Distribution
     50%  750.00us
     75%   30.00ms
     90%   33.00ms
     99%    1.20s
  1140 requests in 1.00s, 180.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 440
Requests/sec:   1140.00
Transfer/sec:    180.00KB
"""


def test_wrk_report_parsed_with_units_errors_and_non_2xx() -> None:
    load = loadgen.parse_wrk(WRK)
    assert load.requests == 1140 and load.seconds == 1.0
    assert load.rps == 700  # good answers only: a fast 503 is no throughput
    assert math.isclose(load.p50, 750e-6) and math.isclose(load.p99, 1.2)
    assert (load.non2xx, load.errors) == (440, 5)


def test_wrk_report_without_errors_counts_none() -> None:
    clean = "\n".join(ln for ln in WRK.splitlines() if "errors" not in ln and "Non-2xx" not in ln)
    load = loadgen.parse_wrk(clean)
    assert (load.non2xx, load.errors) == (0, 0)


def test_wrk_run_where_no_request_finished_has_no_latency() -> None:
    none = WRK.replace("1140 requests in", "0 requests in").replace("Non-2xx or 3xx responses: 440", "")
    load = loadgen.parse_wrk(none)
    assert load.rps == 0 and math.isnan(load.p50) and math.isnan(load.p99)


def test_rows_take_medians_ratios_against_direct_and_judge_each_host_front() -> None:
    rows = {r["test"]: r for r in report.rows({
        "tiny GET c1 req/s": {"direct": [1000, 900, 1100], "host-path": [400, 450, 500],
                              "host-origin": [600, 500, 700], "nginx": [950]},
        "tiny GET c32 non-2xx": {"direct": [0], "host-path": [12], "host-origin": [0]},
        "kill-to-serving ms": {"host-path": [240, 260, 250]},
    })}
    tiny = rows["tiny GET c1 req/s"]
    assert tiny["median"] == {"direct": 1000, "host-path": 450, "host-origin": 600, "nginx": 950}
    assert tiny["ratio"]["nginx"] == 0.95
    assert tiny["met"] == {"host-path": False, "host-origin": True}  # goal: >= 0.5x direct
    assert rows["tiny GET c32 non-2xx"]["met"] == {"host-path": False, "host-origin": True}
    assert rows["kill-to-serving ms"]["met"] == {"host-path": True}  # 250 ms: the goal's own limit


def test_table_shows_ratio_goal_verdict_and_why_a_contender_was_skipped() -> None:
    text = report.table(report.rows({"1 MiB GET c8 req/s": {"direct": [100], "host-path": [50],
                                                           "host-origin": [70]}}),
                        {"jsp": "could not install jupyter-server-proxy", "nginx": "no nginx"})
    head, _, line, *skips = text.splitlines()
    assert head.split()[:4] == ["test", "direct", "host-path", "host-origin"] and "jsp" not in head
    assert "50.0 (0.50x)" in line and "70.0 (0.70x)" in line and ">=0.6x direct" in line
    assert "path:FAIL origin:PASS" in line
    assert skips == ["jsp: skipped: could not install jupyter-server-proxy", "nginx: skipped: no nginx"]
