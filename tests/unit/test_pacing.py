"""TurnPacer on a real event loop: how many callers pass per loop iteration, and in what order."""

from __future__ import annotations

import asyncio

import pytest

from kvs_ingest.pacing import TurnPacer


class IterationCounter:
    """Counts event-loop iterations: a callback that re-schedules itself once per iteration."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def _pass_all(pacer: TurnPacer, callers: int) -> list[tuple[int, int]]:
    """`callers` tasks made ready in the same iteration; (caller, iteration) as each passes."""
    counter = IterationCounter()
    passed: list[tuple[int, int]] = []

    async def caller(i: int) -> None:
        await pacer.turn()
        passed.append((i, counter.count))

    await asyncio.gather(*(caller(i) for i in range(callers)))
    counter.stop()
    return passed


@pytest.mark.parametrize("per_turn", [1, 2, 5])
async def test_at_most_per_turn_callers_pass_in_one_iteration(per_turn: int) -> None:
    passed = await _pass_all(TurnPacer(per_turn), 23)
    per_iteration: dict[int, int] = {}
    for _, iteration in passed:
        per_iteration[iteration] = per_iteration.get(iteration, 0) + 1
    assert max(per_iteration.values()) == per_turn
    # every caller passed, in as few iterations as the bound allows, one after the other
    # (plus the one in which the first waiters are let through)
    assert len(passed) == 23
    assert len(per_iteration) == -(-23 // per_turn)
    assert max(per_iteration) - min(per_iteration) == len(per_iteration)


async def test_callers_pass_first_come_first_served() -> None:
    passed = await _pass_all(TurnPacer(3), 17)
    assert [i for i, _ in passed] == list(range(17))


async def test_without_a_burst_nobody_waits() -> None:
    pacer = TurnPacer(2)
    counter = IterationCounter()
    seen = []
    for _ in range(5):
        before = counter.count
        await pacer.turn()
        seen.append(counter.count - before)
        await asyncio.sleep(0)  # a later iteration: the budget is fresh
    counter.stop()
    assert seen == [0] * 5


async def test_a_cancelled_waiter_does_not_hold_up_the_others() -> None:
    pacer = TurnPacer(1)
    order: list[str] = []

    async def caller(name: str) -> None:
        await pacer.turn()
        order.append(name)

    first = asyncio.create_task(caller("first"))
    doomed = asyncio.create_task(caller("doomed"))
    last = asyncio.create_task(caller("last"))
    await asyncio.sleep(0)  # all three ask in the same iteration; two wait
    doomed.cancel()
    await asyncio.gather(first, last)
    assert order == ["first", "last"]
    assert doomed.cancelled()


def test_per_turn_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TurnPacer(0)
