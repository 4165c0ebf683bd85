"""The host compiles seccomp filters from several threads at once (a worker per plugin): the first import of
pyseccomp (sandbox_runner.layers.seccomp._import, which lends it a stand-in ``ctypes.util`` for a moment) must
not pull ``ctypes.util`` away from another thread. Seen in a host starting two plugins at once: "cannot start:
module 'ctypes' has no attribute 'util'"."""

from __future__ import annotations

import subprocess
import sys

from sandbox_runner.cli import search_path

RACE = """
import sys, threading
sys.path[:0] = {path!r}
from sandbox_runner.layers import seccomp
start = threading.Barrier(8)
errors = []

def compile_one():
    start.wait()
    try:
        bpf, detail = seccomp.compile_bpf(frozenset())
        assert bpf, detail
    except Exception as exc:
        errors.append(f"{{type(exc).__name__}}: {{exc}}")

threads = [threading.Thread(target=compile_one) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""


def test_threads_compiling_their_first_filters_at_once_all_get_one() -> None:
    code = RACE.format(path=search_path())
    for _ in range(5):  # a fresh interpreter each time: only the first import lends the stand-in
        out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        assert out.strip() == "[]"
