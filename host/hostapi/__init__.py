"""The host API that plugins call from inside their sandbox: a per-plugin Unix socket, per-start tokens,
permissions from the manifest's ``host_api`` (enforced in host.hostapi.server, one place), the KV store.

Runs in the supervisor; imports no Flask and nothing of the web tier.
"""
