"""The shared wheel cache (host.wheel_cache): only wheels whose sha256 is the index's get in; bounded; which index."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest

from host import wheel_cache
from host.wheel_cache import WheelCache, installed, published_wheel, shared_index

GOOD = b"PK genuine wheel bytes"
INDEX = "https://index.example/simple"


def _index(body: bytes = GOOD, published: bytes = GOOD, html: bool = False) -> httpx.Client:
    """An index publishing demo 1.0 as a wheel (sha256 of ``published``) serving ``body``, plus an sdist and a
    wheel for another platform."""
    sha = hashlib.sha256(published).hexdigest()
    files = [("demo-1.0.tar.gz", "aa" * 32), ("demo-1.0-cp27-cp27m-win32.whl", "bb" * 32),
             ("demo-1.0-py3-none-any.whl", sha), ("demo-0.9-py3-none-any.whl", "cc" * 32),
             ("demo-1.1rc1.tar.gz", "dd" * 32)]  # a pre-release is not the newest release

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/simple/demo/":
            if html:
                links = "".join(f'<a href="../../files/{f}#sha256={h}">{f}</a>' for f, h in files)
                return httpx.Response(200, text=f"<html><body>{links}</body></html>",
                                      headers={"content-type": "text/html"})
            return httpx.Response(200, json={"meta": {"api-version": "1.0"}, "files": [
                {"filename": f, "url": f"../../files/{f}", "hashes": {"sha256": h}} for f, h in files]},
                headers={"content-type": "application/vnd.pypi.simple.v1+json"})
        if request.url.path.startswith("/files/"):
            return httpx.Response(200, content=body)
        return httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("html", [False, True])
def test_the_wheel_for_this_interpreter_is_picked_with_the_published_hash(html: bool) -> None:
    wheel = published_wheel(_index(html=html), INDEX, "Demo", "1.0")
    assert wheel is not None
    assert wheel.filename == "demo-1.0-py3-none-any.whl"  # not the sdist, not the win32 wheel, not 0.9
    assert wheel.url == "https://index.example/files/demo-1.0-py3-none-any.whl"
    assert wheel.sha256 == hashlib.sha256(GOOD).hexdigest()


def test_a_verified_wheel_is_cached_readable_by_all(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "wheels", 1 << 20)
    cache.ensure()
    assert cache.fill([("demo", "1.0")], INDEX, _index()) == ["demo-1.0-py3-none-any.whl"]
    path = cache.root / "demo-1.0-py3-none-any.whl"
    assert path.read_bytes() == GOOD
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert cache.has("DEMO", "1.0.0") and cache.usable()
    assert cache.fill([("demo", "1.0")], INDEX, _index(body=b"never fetched")) == []  # already there


def test_a_wheel_whose_sha256_is_not_the_published_one_is_not_cached(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    cache = WheelCache(tmp_path / "wheels", 1 << 20)
    cache.ensure()
    assert cache.fill([("demo", "1.0")], INDEX, _index(body=b"PK tampered")) == []
    assert list(cache.root.iterdir()) == []  # not even the partial file
    assert "but the index says" in caplog.text


def test_a_release_without_a_wheel_or_an_unreachable_index_is_skipped(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "wheels", 1 << 20)
    cache.ensure()
    assert cache.fill([("demo", "2.0"), ("other", "1.0")], INDEX, _index()) == []
    assert not cache.usable()


def test_stale_wheels_go_then_the_oldest_until_it_fits(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "wheels", 250)
    cache.ensure()
    now = time.time()
    for name, age in (("a", 10), ("b", 20), ("c", 5), ("old", wheel_cache.FRESH_FOR + 60)):
        p = cache.root / f"{name}-1.0-py3-none-any.whl"
        p.write_bytes(b"x" * 100)
        os.utime(p, (now - age, now - age))
    assert sorted(cache.prune()) == ["b-1.0-py3-none-any.whl", "old-1.0-py3-none-any.whl"]
    assert sorted(p.name for p in cache.wheels()) == ["a-1.0-py3-none-any.whl", "c-1.0-py3-none-any.whl"]


def test_only_the_newest_final_release_is_cached(tmp_path: Path) -> None:
    # A plugin pinning an old release must not steer later installs, which resolve from the cache first, to it.
    assert published_wheel(_index(), INDEX, "demo", "0.9") is None
    assert published_wheel(_index(), INDEX, "demo", "1.0") is not None
    cache = WheelCache(tmp_path / "wheels", 1 << 20)
    cache.ensure()
    assert cache.fill([("demo", "0.9")], INDEX, _index()) == []


def test_what_a_venv_holds_is_read_from_dist_info_names_only(tmp_path: Path) -> None:
    for d in ("Flask-3.1.3.dist-info", "markupsafe-3.0.4.dist-info", "flask", "x-1.0.dist-info.bak",
              "-1.0.dist-info"):
        (tmp_path / d).mkdir()
    assert installed(tmp_path) == [("Flask", "3.1.3"), ("markupsafe", "3.0.4")]
    assert installed(tmp_path / "missing") == []


def test_the_cache_stands_in_for_exactly_one_http_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wheel_cache, "index_options", lambda args: args.split())
    assert shared_index("") == wheel_cache.Index("https://pypi.org/simple", None)
    assert shared_index("--index-url https://mirror/simple --cert /ca.pem") == \
        wheel_cache.Index("https://mirror/simple", "/ca.pem")
    assert shared_index("-i https://mirror/simple") == wheel_cache.Index("https://mirror/simple", None)
    assert shared_index("--extra-index-url https://private/simple") is None  # which index a release is from
    assert shared_index("--no-index --find-links /srv") is None
    assert shared_index("--index-url file:///srv/simple") is None


def test_each_index_has_a_cache_of_its_own(tmp_path: Path) -> None:
    pypi = WheelCache.of(tmp_path, wheel_cache.Index("https://pypi.org/simple", None), 1)
    assert WheelCache.of(tmp_path, wheel_cache.Index("https://pypi.org/simple/", "/ca.pem"), 1).root == pypi.root
    assert WheelCache.of(tmp_path, wheel_cache.Index("https://mirror/simple", None), 1).root != pypi.root
    assert pypi.root.parent == tmp_path
