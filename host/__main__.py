"""`python -m host` is the `host` command."""

from host.cli import main

main()
