"""Egress: the host-side point through which a plugin (or pip at install time) reaches the network.

Every plugin runs in its own network namespace, which holds only listeners the host put there. The egress
process (``python -m host.egress``, unprivileged) accepts on them, decides each connection with
:mod:`host.egress.rules` (names resolved here, on the host side: rebinding-safe), connects from the host's
namespace and relays bytes. Must not import Flask or the supervisor.
"""
