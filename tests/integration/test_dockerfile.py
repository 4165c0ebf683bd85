"""The Dockerfile's steps, run without a container engine: what it COPYs exists, a plain (non-editable)
install of the checkout (`pip install .` in the image; uv here when the host has it, for speed) ships every
module and data file, and the image's start command works from it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from host.pip_options import uv_command
from tests.integration.harness import REPO


def dockerfile_lines() -> list[str]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_copied_paths_exist() -> None:
    copies = [ln.split()[1] for ln in dockerfile_lines() if ln.startswith("COPY ")]
    assert copies, "the Dockerfile copies nothing"
    for src in copies:
        assert (REPO / src).exists(), f"Dockerfile COPY {src}: no such path"


def test_plain_install_serves_the_index_and_runs_the_probe() -> None:
    with tempfile.TemporaryDirectory(prefix="ph-docker-") as tmp:
        env_dir = Path(tmp) / "venv"
        py = env_dir / "bin" / "python"
        uv = uv_command("auto", "")
        if uv is not None:
            # The same non-editable build from the same pyproject, by the installer the host itself uses
            # (pip took over 2 minutes here, most of the suite's longest test): what is checked is what it ships.
            venv.create(env_dir, with_pip=False)
            argv = [uv.binary, "pip", "install", "--quiet", "--no-config", "--python", str(py), *uv.args, str(REPO)]
            env = {**os.environ, **uv.env}
        else:
            venv.create(env_dir, with_pip=True)
            argv = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO)]
            env = dict(os.environ)
        pip = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, env=env)
        assert pip.returncode == 0, pip.stderr[-2000:]
        # the image's build step: `host --help`
        assert subprocess.run([str(env_dir / "bin" / "host"), "--help"], capture_output=True,
                              check=False).returncode == 0
        # the image's start command runs the probe first
        doctor = subprocess.run([str(env_dir / "bin" / "host"), "doctor", "--json"], capture_output=True,
                                text=True, check=False)
        assert doctor.returncode == 0 and '"landlock"' in doctor.stdout
        # package data made it into the install (not only the source tree): template and plugin runtime
        code = ("import host.app, host.runtime as r, pathlib; "
                "assert (pathlib.Path(host.app.__file__).parent / 'templates' / 'index.html').is_file(); "
                "assert all((r.RUNTIME_DIR / m).is_file() for m in r.RUNTIME_MODULES); "
                "import sandbox_runner.layers.seccomp, host.supervisor.core; print('ok')")
        check = subprocess.run([str(py), "-I", "-c", code], capture_output=True, text=True, cwd=tmp, check=False)
        assert check.stdout.strip() == "ok", check.stderr
    assert sys.version_info >= (3, 11)


def test_cmd_uses_exec_so_the_supervisor_gets_sigterm() -> None:
    cmd = next(ln for ln in dockerfile_lines() if ln.startswith("CMD "))
    assert "exec host serve" in cmd
    assert "host doctor" in cmd
    assert shlex.split(cmd)  # well-formed
