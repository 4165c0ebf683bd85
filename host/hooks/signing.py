"""Standard Webhooks signatures (https://www.standardwebhooks.com): the headers every hook call carries.

``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` keyed by the plugin's secret
``whsec_<base64 key>``, which the host hands the plugin at start (PLUGIN_HOST_WEBHOOK_SECRET) and replaces at
every start. The plugin side (host/runtime/plugin_sdk/hooks.py) verifies with ±:data:`TOLERANCE` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

SECRET_PREFIX = "whsec_"
SECRET_ENV = "PLUGIN_HOST_WEBHOOK_SECRET"
TOLERANCE = 300  # seconds either side of the plugin's clock (the spec's recommendation)


def new_secret() -> str:
    """A fresh secret for one start of a plugin: 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for this message."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers (a retry of the same message keeps ``msg_id``, gets a new time)."""
    ts = int(time.time() if now is None else now)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sign(secret, msg_id, ts, body)}
