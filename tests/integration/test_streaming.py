"""Live streaming through the proxy: every chunk a plugin writes reaches the client as it is written, proven
without timing assertions by a plugin that sends its next server-sent event only after the client has
acknowledged the previous one through a second request (a proxy that holds chunks back deadlocks it)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.integration.harness import ServedHost


def acknowledged_stream(client: httpx.Client, base: str, events: int) -> list[str]:
    """Read ``events`` server-sent events, acknowledging each before the plugin sends the next; the event
    names seen, in order (the plugin ends with "done", or "abandoned" when an acknowledgement never came)."""
    stream = uuid.uuid4().hex
    seen: list[str] = []
    with client.stream("GET", f"{base}/events/{stream}", params={"n": events, "wait": 10}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append(name)
                if name == "tick":
                    n = line.removeprefix("data: ").split()[0]
                    assert client.post(f"{base}/ack/{stream}/{n}").text == "ok"
            if len(seen) > events + 1:
                break
    return seen


@pytest.mark.parametrize("mode", ["path", "origin"])
def test_each_event_reaches_the_client_before_the_plugin_sends_the_next(served: ServedHost, mode: str) -> None:
    client = served.origin_client("sse") if mode == "origin" else httpx.Client(timeout=30)
    base = "" if mode == "origin" else served.url + "/plugins/sse"
    with client:
        assert acknowledged_stream(client, base, 5) == ["tick"] * 5 + ["done"]

