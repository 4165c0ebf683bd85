"""host.proxy.Slots: a burst beyond a plugin's in-flight cap waits in line (first come, first served)
instead of getting 503 at once; only a full line or an expired wait refuses."""

from __future__ import annotations

import threading

import pytest

from host.proxy import ProxyError, Slots


def waiter(slots: Slots, name: str, wait: float, order: list[str], tag: str) -> threading.Thread:
    def run() -> None:
        try:
            slots.acquire(name, wait)
            order.append(tag)
        except ProxyError as exc:
            order.append(f"{tag}:{exc.status}")

    t = threading.Thread(target=run)
    t.start()
    return t


def until(pred: object, what: str) -> None:
    for _ in range(2000):
        if pred():  # type: ignore[operator]
            return
        threading.Event().wait(0.001)
    raise AssertionError(what)


def test_within_the_cap_nobody_waits() -> None:
    slots = Slots(2, 4)
    slots.acquire("a", 0)
    slots.acquire("a", 0)
    slots.acquire("b", 0)  # another plugin's slots are its own


def test_without_a_queue_the_cap_refuses_at_once() -> None:
    slots = Slots(1, 0)
    slots.acquire("a", 5)
    with pytest.raises(ProxyError) as refused:
        slots.acquire("a", 5)
    assert (refused.value.status, refused.value.title, refused.value.retry_after) == (503, "Plugin busy", 1)
    assert refused.value.detail == "plugin 'a' has 1 requests in flight and 0 waiting already"


def test_a_freed_slot_goes_to_the_oldest_waiter_not_to_a_newcomer() -> None:
    slots = Slots(1, 4)
    slots.acquire("a", 0)
    order: list[str] = []
    first = waiter(slots, "a", 30, order, "first")
    until(lambda: slots.waiting("a") == 1, "first waits")
    second = waiter(slots, "a", 30, order, "second")
    until(lambda: slots.waiting("a") == 2, "second waits")
    slots.release("a")
    first.join(10)
    assert order == ["first"]
    # a request arriving now finds the line non-empty: it may not overtake "second", and waits no time
    with pytest.raises(ProxyError):
        slots.acquire("a", 0)
    slots.release("a")
    second.join(10)
    assert order == ["first", "second"]
    slots.release("a")
    slots.acquire("a", 0)  # all handed back: the slot is free again


def test_a_full_line_refuses_and_an_expired_wait_gives_up_its_place() -> None:
    slots = Slots(1, 1)
    slots.acquire("a", 0)
    order: list[str] = []
    queued = waiter(slots, "a", 30, order, "queued")
    until(lambda: slots.waiting("a") == 1, "queued waits")
    with pytest.raises(ProxyError) as full:
        slots.acquire("a", 30)
    assert full.value.detail == "plugin 'a' has 1 requests in flight and 1 waiting already"
    slots.release("a")
    queued.join(10)
    with pytest.raises(ProxyError) as late:
        slots.acquire("a", 0.05)
    assert late.value.detail == "plugin 'a' did not free a slot within 0.05s (1 requests in flight)"
    assert slots.waiting("a") == 0
    slots.release("a")
    slots.acquire("a", 0)
