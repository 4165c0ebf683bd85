"""Entry point of ``python -I -m sandbox_runner``."""

from __future__ import annotations

from sandbox_runner.cli import main

raise SystemExit(main())
