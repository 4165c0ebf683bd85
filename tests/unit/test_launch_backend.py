"""Which instances run without a resident sandbox runner (host.launch.build): only those the bwrap backend is
sure to start. With "auto" the runner may fall back to the syscalls backend, which stays resident as the
instance's root; a supervisor that took it for bwrap would signal a gunicorn worker instead of the runner (every
stop its full grace period, then SIGKILL) and misread the runner's exit status as the command's."""

from __future__ import annotations

from pathlib import Path

import pytest

from host import launch
from host.registry import PluginRecord
from host.settings import HostSettings

MANIFEST = {"name": "demo", "version": "1.0.0", "entrypoint": "app:app"}


@pytest.mark.parametrize(("sandbox", "backend", "resident", "named"), [
    ("strict", "bwrap", False, "bwrap"),  # serving_backend found bwrap usable: the runner becomes bwrap
    ("strict", "auto", True, "auto"),  # bwrap unusable: the runner probes (and refuses, strict)
    ("weak", "auto", True, "auto"),  # may fall back to the syscalls backend
])
def test_only_a_sure_bwrap_start_has_no_resident_runner(tmp_path: Path, sandbox: str, backend: str, resident: bool,
                                                         named: str) -> None:
    settings = HostSettings(home=tmp_path / "h", sandbox=sandbox)
    record = PluginRecord("demo", "1.0.0", "1.0.0-abcdef", MANIFEST, True, 0, 0.0, 0.0)
    policy = launch.build(settings, record, backend=backend).policy
    assert (policy.resident, policy.backend) == (resident, named)
