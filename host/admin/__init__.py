"""The admin listener's Flask app: the admin API (host.admin.api), the admin UI (host.admin.ui) and /metrics
(host.admin.metrics). It runs in the unprivileged admin web tier and never opens the registry or the root
control socket: every operation is one call on the supervisor's admin socket (host.admin.client)."""
