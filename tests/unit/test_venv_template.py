"""Venvs kept for reuse (host.venv_template): which template an install may use, what its key covers, and the
copy naming its own venv. (The copy itself, with cp, is tests/integration/test_wheel_cache.py's.)"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from host import venv_template
from host.venv_template import Templates
from host.wheel_cache import FRESH_FOR, WheelCache


def _cache(tmp_path: Path, *wheels: str) -> WheelCache:
    cache = WheelCache(tmp_path / "wheels", 1 << 20)
    cache.root.mkdir(parents=True)
    for w in wheels:
        (cache.root / w).write_bytes(b"PK")
    return cache


def _template(root: Path, key: str, made: float, dists: list[list[str]]) -> None:
    (root / key / "venv").mkdir(parents=True)
    (root / key / "made.json").write_text(json.dumps({"venv": "/old/venv", "made": made, "dists": dists,
                                                      "entries": 1}))


def test_a_fresh_template_of_the_newest_cached_releases_is_used(tmp_path: Path) -> None:
    cache = _cache(tmp_path, "flask-3.1.3-py3-none-any.whl", "click-8.5.1-py3-none-any.whl")
    _template(tmp_path / "venvs", "k", time.time() - 60, [["flask", "3.1.3"], ["click", "8.5.1"]])
    found = Templates(tmp_path / "venvs", cache).find("k")
    assert found is not None and found.origin == "/old/venv"
    assert found.dists == (("flask", "3.1.3"), ("click", "8.5.1")) and found.entries == 1
    assert Templates(tmp_path / "venvs", cache).find("other") is None


@pytest.mark.parametrize("why", ["stale", "newer release cached", "release gone", "from the future"])
def test_a_template_the_installer_would_not_reproduce_today_is_not_used(tmp_path: Path, why: str) -> None:
    wheels = ["flask-3.1.3-py3-none-any.whl", "click-8.5.1-py3-none-any.whl"]
    if why == "newer release cached":  # a later install fetched it: an install from the cache would pick it
        wheels.append("flask-3.2.0-py3-none-any.whl")
    if why == "release gone":
        wheels.remove("click-8.5.1-py3-none-any.whl")
    made = {"stale": time.time() - FRESH_FOR - 1, "from the future": time.time() + 3600}.get(why, time.time())
    _template(tmp_path / "venvs", "k", made, [["flask", "3.1.3"], ["click", "8.5.1"]])
    assert Templates(tmp_path / "venvs", _cache(tmp_path, *wheels)).find("k") is None


def test_the_key_covers_requirements_installer_interpreter_runtime_and_index(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "plugin_host_wsgi.py").write_text("v1")

    def key(requirements: str = "flask>=2.2\ngunicorn>=23", index: str = "https://pypi.org/simple",
            python: str = "/usr/bin/python3.11 3.11.7", cache: str = "a") -> str:
        return venv_template.key(requirements, ["uv", "--index-url", index], python, runtime, ["plugin_host_wsgi.py"],
                                 WheelCache(tmp_path / "wheels" / cache, 0))

    base = key()
    assert key() == base
    changed = [key(requirements="flask>=2.2"), key(index="https://mirror.example/simple"),
               key(python="/usr/bin/python3.12 3.12.1"), key(cache="b")]
    (runtime / "plugin_host_wsgi.py").write_text("v2")  # a host upgrade changed the runtime copied into venvs
    changed.append(key())
    assert base not in changed and len(set(changed)) == len(changed)


def test_the_copys_scripts_name_its_own_venv(tmp_path: Path) -> None:
    bin_dir = tmp_path / "new" / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "gunicorn").write_text("#!/old/venv/bin/python\nimport gunicorn\n")
    os.chmod(bin_dir / "gunicorn", 0o755)
    (bin_dir / "activate").write_text('VIRTUAL_ENV="/old/venv"\n')
    os.symlink("/usr/bin/python3", bin_dir / "python")
    venv_template._rename_in_scripts(bin_dir, "/old/venv", str(bin_dir.parent))
    assert (bin_dir / "gunicorn").read_text() == f"#!{bin_dir.parent}/bin/python\nimport gunicorn\n"
    assert os.stat(bin_dir / "gunicorn").st_mode & 0o777 == 0o755
    assert (bin_dir / "activate").read_text() == f'VIRTUAL_ENV="{bin_dir.parent}"\n'
    assert os.readlink(bin_dir / "python") == "/usr/bin/python3"  # links are left alone, never written through


def test_publishing_keeps_the_newest_few_and_drops_stale_ones(tmp_path: Path) -> None:
    root = tmp_path / "venvs"
    templates = Templates(root, _cache(tmp_path))
    for i in range(venv_template.KEEP):
        _template(root, f"old{i}", time.time() - 100 + i, [["flask", "3.1.3"]])
    _template(root, "stale", time.time() - FRESH_FOR - 5, [["flask", "3.1.3"]])
    _template(tmp_path / "partial", "p", time.time(), [["flask", "3.1.3"]])
    assert templates.publish("new", tmp_path / "partial" / "p")
    assert os.stat(root).st_mode & 0o777 == 0o700
    assert sorted(d.name for d in root.iterdir()) == ["new", *(f"old{i}" for i in range(1, venv_template.KEEP))]


def test_a_good_template_is_never_replaced_under_an_install_copying_it(tmp_path: Path) -> None:
    root = tmp_path / "venvs"
    templates = Templates(root, _cache(tmp_path, "flask-3.1.3-py3-none-any.whl"))
    _template(root, "k", time.time() - 60, [["flask", "3.1.3"]])
    (root / "k" / "venv" / "in-use").touch()
    _template(tmp_path / "partial", "p", time.time(), [["flask", "3.1.3"]])
    assert not templates.publish("k", tmp_path / "partial" / "p")  # the one there is as good: it stays
    assert (root / "k" / "venv" / "in-use").exists() and not (tmp_path / "partial" / "p").exists()
    (root / "k" / "made.json").write_text(json.dumps({"venv": "/old/venv", "made": time.time() - FRESH_FOR - 1,
                                                      "dists": [["flask", "3.1.3"]], "entries": 1}))
    _template(tmp_path / "partial", "p", time.time(), [["flask", "3.1.3"]])
    assert templates.publish("k", tmp_path / "partial" / "p")  # a stale one is replaced
    assert not (root / "k" / "venv" / "in-use").exists() and templates.find("k") is not None
    assert [d.name for d in root.iterdir()] == ["k"]


def test_a_copy_cut_short_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cp misses, silently, what a prune removed before cp listed its directory: the count says so."""
    src = tmp_path / "venvs" / "k" / "venv"
    (src / "bin").mkdir(parents=True)
    (src / "lib" / "flask").mkdir(parents=True)
    (src / "lib" / "flask" / "__init__.py").touch()

    def cut_short(_src: Path, dst: Path) -> None:
        (dst / "bin").mkdir(parents=True)
        (dst / "lib").mkdir()

    monkeypatch.setattr(venv_template, "_copy", cut_short)
    template = venv_template.Template(src, "/old/venv", (("flask", "3.1.3"),), venv_template._count(src))
    with pytest.raises(OSError, match="copied 2 of the 4 entries"):
        Templates(tmp_path / "venvs", _cache(tmp_path)).clone(template, tmp_path / "new" / "venv")
