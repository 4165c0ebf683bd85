"""Files copied verbatim into every plugin's venv; they run inside the sandbox and import nothing of the host."""

from __future__ import annotations

from pathlib import Path

RUNTIME_DIR = Path(__file__).parent
# module (and .pth) files installed into the plugin venv's site-packages
RUNTIME_MODULES = ("plugin_base.py", "plugin_host_wsgi.py", "plugin_host_defaults.py",
                   "plugin_host_defaults.pth")  # the .pth runs plugin_host_defaults in every process of the venv
# packages installed the same way, every .py file of each (the plugin SDK: ``import plugin_sdk``)
RUNTIME_PACKAGES = ("plugin_sdk",)


def runtime_files() -> list[str]:
    """Every file (relative to RUNTIME_DIR) that goes into a plugin venv's site-packages."""
    files = list(RUNTIME_MODULES)
    for package in RUNTIME_PACKAGES:
        files += sorted(f"{package}/{p.name}" for p in (RUNTIME_DIR / package).glob("*.py"))
    return files
# gunicorn loads this WSGI callable; it reads the real entrypoint from PLUGIN_ENTRYPOINT
WSGI_TARGET = "plugin_host_wsgi:application"
# gunicorn's config file (worker-death reports): written by root next to the venv, never inside the bundle
# or the venv, whose files the plugin's own code (its sdists' build scripts) may have written.
GUNICORN_CONFIG = "plugin_host_gunicorn.py"
