"""What an idle host keeps resident (issue 12): heavy modules it needs only to install or sign stay out of the
supervisor, and the web tier's workers share the app their arbiter built. Observed from outside, in /proc,
on the session's host (no host of its own). The figures are bench/memory.py's, not asserted here."""

from __future__ import annotations

from tests.integration.harness import ServedHost, descendants


def mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as fh:
        return {line.split(None, 5)[5].strip() for line in fh if len(line.split(None, 5)) == 6}


def test_the_idle_supervisor_has_not_loaded_cryptography(served: ServedHost) -> None:
    """cryptography (Ed25519, ~6 MiB resident) is for signing and verifying bundles: `host install`, `host
    sign`, an upload's install; the supervisor serving plugins never loads it."""
    assert served.proc is not None
    supervisor = served.proc.pid
    files = mapped_files(supervisor)
    assert any("/pydantic_core/" in f for f in files)  # the look works: a compiled module it does load
    assert not [f for f in files if "/cryptography/" in f]


def test_no_web_process_loads_cryptography(served: ServedHost) -> None:
    web = served.status()["web"]["pid"]
    for pid in {web, *descendants(web)}:
        assert not [f for f in mapped_files(pid) if "/cryptography/" in f], pid
