"""pip's index configuration translated on the host side: what the confined pip gets instead of PIP_* and pip.conf."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from host import launch
from host.pip_options import (
    UvCommand,
    index_options,
    local_paths,
    machine_config_files,
    redact,
    uv_arguments,
    uv_command,
)
from host.settings import HostSettings


def test_machine_config_and_pip_variables_become_options_before_host_pip_args(tmp_path: Path) -> None:
    xdg, etc = tmp_path / "xdg.conf", tmp_path / "etc.conf"
    xdg.write_text("[global]\nindex-url = https://xdg.example/simple\nconstraint = /c.txt\nproxy = http://p:3128\n")
    etc.write_text("[global]\nindex_url = https://etc.example/simple\ntrusted-host = a.example b.example\n"
                   "[install]\nno-index = yes\n[freeze]\nfind-links = /ignored\n")
    env = {"PIP_EXTRA_INDEX_URL": "https://x1.example/simple https://x2.example/simple",
           "PIP_DEFAULT_TIMEOUT": "180", "PIP_FOO_SECRET": "hunter2", "PIP_CLIENT_CERT": "/root/key.pem"}
    assert index_options("--find-links /w", env, [str(xdg), str(etc)]) == [
        "--index-url", "https://etc.example/simple",  # the later file wins, as in pip
        "--extra-index-url", "https://x1.example/simple", "--extra-index-url", "https://x2.example/simple",
        "--trusted-host", "a.example", "--trusted-host", "b.example",
        "--no-index",
        "--constraint", "/c.txt",
        "--timeout", "180",
        "--find-links", "/w",  # HOST_PIP_ARGS last: command-line options win in pip
    ]


def test_pip_variables_override_files_and_devnull_means_no_files(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /from-file\n")
    assert index_options("", {"PIP_FIND_LINKS": "/from-env"}, [str(conf)]) == ["--find-links", "/from-env"]
    assert machine_config_files({"PIP_CONFIG_FILE": os.devnull}) == []
    assert machine_config_files({"XDG_CONFIG_DIRS": "/a:/b", "PIP_CONFIG_FILE": "/op.conf"}) == [
        "/a/pip/pip.conf", "/b/pip/pip.conf", "/etc/pip.conf", "/op.conf"]


def test_local_indexes_are_mounted_and_passwords_stay_out_of_logs(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    (tmp_path / "simple").mkdir()
    args = ["--find-links", str(tmp_path / "wheels"), f"--index-url=file://{tmp_path / 'simple'}",
            "-f", "/does/not/exist", "--extra-index-url", "https://u:tok@idx.example/simple", "-c/etc/hostname"]
    assert local_paths(args) == (str(tmp_path / "wheels"), str(tmp_path / "simple"), "/etc/hostname")
    assert redact(["pip", "--extra-index-url", "https://u:tok@idx.example/simple"]) == [
        "pip", "--extra-index-url", "https://u:****@idx.example/simple"]


def test_the_pip_sandbox_gets_no_operator_variable_and_no_config(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_FOO_SECRET", "hunter2")
    monkeypatch.setenv("PIP_INDEX_URL", "https://u:tok@idx.example/simple")
    install = tmp_path / "p" / "1.0-abc"
    policy = launch.pip_policy(HostSettings(home=tmp_path), "p", install, install / ".tmp" / "cache", None)
    assert not any("hunter2" in v or "tok" in v for v in policy.env.values())
    assert sorted(k for k in policy.env if k.startswith("PIP_")) == [
        "PIP_CACHE_DIR", "PIP_CONFIG_FILE", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_INPUT"]
    assert policy.env["PIP_CONFIG_FILE"] == os.devnull
    assert policy.env["HOME"] == str(install / ".tmp")
    assert not {"/etc/pip.conf", "/etc/xdg/pip"} & set(policy.ro_paths)


def test_uv_gets_the_same_index_options_in_its_own_spelling() -> None:
    args = ["--find-links", "/opt/wheels", "--cert", "/etc/ca.pem", "-c/etc/c.txt", "--timeout=60",
            "--trusted-host", "idx.local", "--no-index", "-i", "https://idx.local/simple", "--retries", "2"]
    assert uv_arguments(args) == (
        ["--find-links", "/opt/wheels", "--constraint", "/etc/c.txt", "--allow-insecure-host", "idx.local",
         "--no-index", "--index-url", "https://idx.local/simple"],
        {"SSL_CERT_FILE": "/etc/ca.pem", "UV_HTTP_TIMEOUT": "60", "UV_HTTP_RETRIES": "2"})


@pytest.mark.parametrize("args", [["--pre"], ["--index-url"], ["--only-binary", ":all:"], ["-r", "x.txt"]])
def test_an_option_uv_cannot_express_keeps_pip(args: list[str]) -> None:
    assert uv_arguments(args) is None


def test_installer_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("host.pip_options.uv_binary", lambda: "/opt/uv")
    monkeypatch.setattr("host.pip_options.index_options", lambda args, wheelhouse=None: shlex.split(args))
    assert uv_command("pip", "") is None
    assert uv_command("auto", "--pre") is None
    assert uv_command("auto", "-f /w") == UvCommand("/opt/uv", ("--find-links", "/w"), {})
    with pytest.raises(ValueError) as refused:
        uv_command("uv", "--pre")
    assert str(refused.value) == ("HOST_INSTALLER=uv, but an option of HOST_PIP_ARGS or of the machine's pip "
                                  "configuration has no uv equivalent")
    monkeypatch.setattr("host.pip_options.uv_binary", lambda: None)
    assert uv_command("auto", "") is None
    with pytest.raises(ValueError) as missing:
        uv_command("uv", "")
    assert str(missing.value) == "HOST_INSTALLER=uv, but the uv package is not installed"
