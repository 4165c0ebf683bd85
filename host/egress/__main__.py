"""``python -m host.egress --control-fd N [--uid U --gid G]``: the egress process (see host.egress.server)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys

from host.egress.server import Egress

PR_SET_PDEATHSIG = 1


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m host.egress")
    ap.add_argument("--control-fd", type=int, required=True)
    ap.add_argument("--uid", type=int)
    ap.add_argument("--gid", type=int)
    args = ap.parse_args()
    control = socket.socket(fileno=args.control_fd)
    if args.uid is not None:
        gid = args.gid if args.gid is not None else args.uid
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(args.uid, args.uid, args.uid)
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the uid change, which clears it
    if os.getppid() != parent:
        return 1
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s egress %(levelname)s %(message)s")
    Egress(control).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
