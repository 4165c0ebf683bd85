"""The web tier drops root, then keeps importing lazily: the installation it runs from must stay readable to
its uid even when a directory above it is closed to others (a checkout under /root, 0700)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="drops from root to another uid")

SCRIPT = """
import os, sys
from host.webtier import drop_privileges, keep_python_reachable
keep_python_reachable()
drop_privileges(65534, 65534)
import lazy.later  # first imported after the drop, as gunicorn imports its logger class
print(lazy.later.WHAT)
"""


def test_a_checkout_in_a_closed_directory_stays_importable_after_the_drop(tmp_path: Path) -> None:
    """``python -m`` run inside the checkout puts the checkout first on sys.path; its .venv, below it, must
    be kept reachable all the same (it once was not: the web tier crash-looped with "No module named
    'gunicorn.glogging'" for a checkout in a 0700 directory)."""
    closed = tmp_path / "closed"
    site = closed / "checkout" / ".venv" / "site-packages"
    (site / "lazy").mkdir(parents=True)
    (site / "lazy" / "__init__.py").write_text("")
    (site / "lazy" / "later.py").write_text("WHAT = 'imported after the drop'\n")
    (site / "serve_it.py").write_text(SCRIPT)
    closed.chmod(0o700)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "serve_it"], check=False, cwd=closed / "checkout",
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{site}:{repo}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "imported after the drop"
    assert closed.stat().st_mode & 0o777 == 0o700  # a private view, not a mode change on disk
