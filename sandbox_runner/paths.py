"""Which host paths a sandboxed Python process needs, shared by the bwrap view and the Landlock allow-list."""

from __future__ import annotations

import os
import sys

from sandbox_runner.policy import Policy

# Read-only system paths a dynamically linked Python needs. Deliberately absent: /etc/passwd, /etc/shadow,
# /etc/group (user names and hashes), /home, /root, /var, /run, host /tmp.
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
