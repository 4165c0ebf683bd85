"""The web tier process: gunicorn (threaded workers) serving the host's Flask app.

Started by the supervisor as ``python -m host.webtier`` with HostSettings in HOST_* variables. It asks the
kernel to SIGKILL it if the supervisor dies, so a killed host never leaves a web tier behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from host.app import create_app
from host.settings import HostSettings

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class WebTier(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        opts: dict[str, Any] = {
            "bind": [s.bind],
            "workers": s.web_workers,
            "threads": s.web_threads,
            "worker_class": "gthread",
            "timeout": 3600,  # streaming responses are long; the proxy enforces per-plugin timeouts
            "graceful_timeout": max(1, int(s.stop_grace)),
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "proc_name": "plugin-host-web",
            "control_socket_disable": True,
            # Forwarded headers only from the operator's front proxies (gunicorn's default trusts loopback).
            # One scheme header, the one the proxy sets; with no proxy, none, since gunicorn believes every
            # Unix-socket peer. No SCRIPT_NAME/PATH_INFO from anyone: the host is always mounted at "/".
            "forwarded_allow_ips": s.forwarded_allow_ips,
            "secure_scheme_headers": {"X-FORWARDED-PROTO": "https"} if s.forwarded_allow_ips else {},
            "forwarder_headers": "",
        }
        for key, value in opts.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.settings)


def main() -> None:
    die_with_parent()
    settings = HostSettings()
    sys.argv = sys.argv[:1]  # gunicorn must not parse our arguments
    WebTier(settings).run()


if __name__ == "__main__":
    main()
