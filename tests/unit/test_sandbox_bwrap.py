"""bwrap argv built from a Policy: namespaces, capabilities, the filesystem view, the inner stage."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sandbox_runner import bwrap, paths
from sandbox_runner.policy import Network, Policy


def launch(root: bool = True) -> bwrap.Launch:
    return bwrap.Launch(
        bwrap="/opt/bwrap",
        python="/root/.pyenv/versions/3.11.7/bin/python3.11",
        runner_pkg="/site/sandbox_runner",
        root=root,
        symlinks={"/bin": "usr/bin", "/lib": "usr/lib"},
    )


FACTS = launch()
POLICY = Policy(
    name="demo",
    ro_paths=("/srv/h/plugins/demo", "/srv/h/plugins/demo/venv"),
    rw_paths=("/srv/h/data/demo", "/srv/h/run/demo"),
    env={"HOME": "/srv/h/data/demo"},
    uid=700001,
)


def build(policy: Policy = POLICY, facts: bwrap.Launch = FACTS) -> list[str]:
    return bwrap.argv(policy, facts, ["/venv/bin/gunicorn", "app:app"], 5, 6, 7)


def binds(argv: list[str], option: str) -> list[str]:
    return [argv[i + 2] for i, a in enumerate(argv) if a == option]


def test_no_network_gets_its_own_empty_netns() -> None:
    assert "--unshare-net" in build()
    assert "--unshare-net" not in build(Policy(name="n", uid=1, network=Network(enabled=True)))


def test_as_root_there_is_no_user_namespace_so_the_uid_drop_inside_works() -> None:
    argv = build()
    assert "--unshare-user" not in argv and "--unshare-all" not in argv
    assert "--unshare-user" in build(facts=launch(root=False))


def test_only_the_caps_for_the_uid_drop_survive_into_the_sandbox() -> None:
    argv = build()
    kept = [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"]
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert sorted(kept) == ["CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID"]


def test_the_sandbox_dies_with_the_runner_and_has_its_own_session() -> None:
    argv = build()
    assert {"--die-with-parent", "--new-session", "--unshare-pid"} <= set(argv)
    assert "--as-pid-1" not in argv  # bwrap's init must stay pid 1, see bwrap.argv


def test_secrets_of_the_host_are_not_in_the_view() -> None:
    mounted = set(binds(build(), "--ro-bind-try")) | set(binds(build(), "--bind-try"))
    assert not {"/etc/shadow", "/etc/passwd", "/etc/group", "/root", "/home", "/etc"} & mounted
    assert "/etc/ld.so.cache" in mounted
    assert "/etc/resolv.conf" not in mounted  # only with network


def test_rw_paths_are_bound_writable_after_ro_ones() -> None:
    argv = build()
    assert binds(argv, "--bind-try") == ["/srv/h/data/demo", "/srv/h/run/demo"]
    last_ro = max(i for i, a in enumerate(argv) if a == "--ro-bind-try")
    assert all(i > last_ro for i, a in enumerate(argv) if a == "--bind-try")
    ro = binds(argv, "--ro-bind-try")
    assert ro.index("/srv/h/plugins/demo") < ro.index("/srv/h/plugins/demo/venv")  # parents first


def test_parent_dirs_are_created_traversable_but_not_over_mounts() -> None:
    argv = build()
    made = [argv[i + 1] for i, a in enumerate(argv) if a == "--dir"]
    assert "/root/.pyenv" in made and "/srv/h" in made and "/run/sandbox_runner" in made
    assert "/tmp" not in made and "/usr" not in made and "/srv/h/plugins/demo" not in made
    assert all(argv[argv.index("--dir", i) - 1] == "0755" for i, a in enumerate(argv) if a == "--dir")


def test_system_symlinks_are_recreated_not_bound() -> None:
    argv = build()
    i = argv.index("--symlink")
    assert argv[i : i + 3] == ["--symlink", "usr/bin", "/bin"]
    assert "/bin" not in binds(argv, "--ro-bind-try")


def test_the_inner_stage_runs_isolated_from_a_clean_environment() -> None:
    argv = build()
    assert "--clearenv" in argv and "--setenv" not in argv
    assert argv[argv.index("--info-fd") + 1] == "7"
    tail = argv[argv.index("--") + 1 :]
    assert tail[:5] == [FACTS.python, "-I", "-S", "-B", "-c"]
    assert paths.RUNNER_LIB in tail[5]
    assert tail[6:] == ["5", "6", "--", "/venv/bin/gunicorn", "app:app"]
    assert binds(argv, "--ro-bind")[:1] == [f"{paths.RUNNER_LIB}/sandbox_runner"]
    # pyseccomp stays outside: the outer stage compiles the filter and the inner loads the raw program
    assert not any("seccomp" in b for b in binds(argv, "--ro-bind") + binds(argv, "--ro-bind-try"))


ETC = (("/etc/passwd", "/srv/h/run/.demo.passwd"), ("/etc/group", "/srv/h/run/.demo.group"))


def test_generated_etc_files_are_bound_read_only_where_the_hosts_are_not() -> None:
    argv = build(dataclasses.replace(POLICY, etc_files=ETC))
    i = argv.index("/srv/h/run/.demo.passwd")
    assert argv[i - 1 : i + 2] == ["--ro-bind", "/srv/h/run/.demo.passwd", "/etc/passwd"]
    i = argv.index("/srv/h/run/.demo.group")
    assert argv[i - 1 : i + 2] == ["--ro-bind", "/srv/h/run/.demo.group", "/etc/group"]
    assert "/etc/passwd" not in binds(argv, "--ro-bind-try")  # never the host's own file


def test_a_hosts_file_still_replaces_etc_hosts_and_etc_files_win() -> None:
    net = Network(enabled=True, hosts_file="/srv/h/run/.demo.hosts")
    argv = build(dataclasses.replace(POLICY, network=net))
    assert binds(argv, "--ro-bind").count("/etc/hosts") == 1
    assert argv[argv.index("/srv/h/run/.demo.hosts") - 1] == "--ro-bind"
    assert "/etc/hosts" not in binds(argv, "--ro-bind-try")
    argv = build(dataclasses.replace(POLICY, network=net, etc_files=(("/etc/hosts", "/srv/h/run/new.hosts"),)))
    assert "/srv/h/run/.demo.hosts" not in argv and "/srv/h/run/new.hosts" in argv


def test_a_policy_cannot_replace_any_other_etc_file() -> None:
    for bad in ((("/etc/shadow", "/srv/x"),), (("/etc/ld.so.cache", "/srv/x"),), (("/etc/passwd", "rel"),),
                (("/etc/passwd", "/a"), ("/etc/passwd", "/b"))):
        with pytest.raises(ValueError, match="etc_files"):
            Policy(name="x", etc_files=bad)
    raw = json.loads(Policy(name="x", etc_files=ETC).to_json())
    assert Policy.from_json(json.dumps(raw)).etc_files == ETC
    raw["etc_files"] = [["/etc/shadow", "/srv/x"]]
    with pytest.raises(ValueError, match="'/etc/shadow' cannot be replaced"):
        Policy.from_json(json.dumps(raw))


def test_landlock_allows_the_generated_files_only_where_bwrap_bound_them() -> None:
    from sandbox_runner import inner
    from sandbox_runner.handoff import Handoff

    policy = dataclasses.replace(POLICY, etc_files=ETC)
    assert {"/etc/passwd", "/etc/group"} <= set(inner._landlock_paths(Handoff(policy, "bwrap"))[0])
    assert not {"/etc/passwd", "/etc/group"} & set(inner._landlock_paths(Handoff(policy, "syscalls"))[0])


def test_a_non_resident_runner_asks_bwrap_for_no_info_fd() -> None:
    # Policy.resident=False: the runner becomes bwrap, and nobody is left to read the sandbox's pid 1.
    argv = bwrap.argv(Policy(name="p"), FACTS, ["/bin/true"], 5, 6, None)
    assert "--info-fd" not in argv
    assert argv[argv.index("--") + 1:][-3:] == ["6", "--", "/bin/true"]


def test_the_sandbox_has_a_private_writable_dev_shm_for_posix_semaphores() -> None:
    # multiprocessing's locks, queues and pools are POSIX semaphores in /dev/shm
    argv = build()
    shm = argv.index("/dev/shm")
    assert argv[shm - 3:shm + 1] == ["--perms", "1777", "--tmpfs", "/dev/shm"]
    assert shm > argv.index("--dev")  # on top of bwrap's fresh /dev, not the host's
    assert "/dev/shm" not in binds(argv, "--bind-try") + binds(argv, "--ro-bind-try")


def test_landlock_allows_dev_shm_and_ptys_only_where_bwrap_made_them_private() -> None:
    from sandbox_runner import inner
    from sandbox_runner.handoff import Handoff

    assert {"/dev/shm", "/dev/pts"} <= set(inner._landlock_paths(Handoff(POLICY, "bwrap"))[1])
    syscalls = inner._landlock_paths(Handoff(POLICY, "syscalls"))
    assert not {"/dev/shm", "/dev/pts", "/dev/ptmx"} & {*syscalls[0], *syscalls[1], *syscalls[2]}  # the host's
