"""Which host paths a sandboxed Python process needs, shared by the bwrap view and the Landlock allow-list."""

from __future__ import annotations

import os
import stat
import sys

from sandbox_runner.errors import LayerFailed

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (sandbox_runner.inner imports this)
if TYPE_CHECKING:
    from sandbox_runner.policy import Policy

# Read-only system paths a dynamically linked Python needs. Deliberately absent: /etc/passwd, /etc/shadow,
# /etc/group (the host's user names and hashes; a policy's etc_files may show generated ones instead), /home,
# /root, /var, /run, host /tmp.
SYSTEM_RO = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
)
# Only with network access: name resolution needs these (and they reveal little once the network is open).
NETWORK_RO = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
)
DEV_RW = ("/dev/null", "/dev/zero", "/dev/full")
DEV_RO = ("/dev/random", "/dev/urandom")
# Where the bwrap backend mounts this package (and pyseccomp) for the inner stage.
RUNNER_LIB = "/run/sandbox_runner/lib"


def interpreter() -> str:
    """The real interpreter binary (not a venv symlink): the inner stage re-executes it inside bwrap."""
    return os.path.realpath(sys.executable)


def interpreter_prefix() -> str:
    return os.path.realpath(sys.base_prefix)


def system_ro(policy: Policy) -> tuple[str, ...]:
    extra = NETWORK_RO if policy.network.enabled else ()
    return (*SYSTEM_RO, *extra, interpreter_prefix())


def etc_binds(policy: Policy) -> dict[str, str]:
    """/etc path -> the host file shown there (bwrap backend): ``etc_files``, plus the older
    ``network.hosts_file`` for /etc/hosts unless etc_files names it too."""
    out = {"/etc/hosts": policy.network.hosts_file} if policy.network.hosts_file else {}
    out.update(dict(policy.etc_files))
    return out


def check_etc_sources(policy: Policy) -> None:
    """Each file bound over /etc must be a regular file (not a symlink) of the runner's own user, writable by
    no one else: bwrap, as root, would follow a symlink and show whatever it names (/etc/shadow)."""
    me = os.geteuid()
    for dest, src in etc_binds(policy).items():
        try:
            st = os.lstat(src)
        except OSError as exc:
            raise LayerFailed("namespaces", f"{dest}: source {src}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode) or st.st_uid != me or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise LayerFailed("namespaces", f"{dest}: source {src} must be a regular file of uid {me} that "
                              "only its owner may write")
