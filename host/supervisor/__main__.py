"""`python -m host.supervisor`: the supervisor process `host serve` becomes (host.supervisor.serve)."""

from host.supervisor.serve import main

main()
