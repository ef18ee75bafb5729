"""A bound on how many CPU-heavy steps start in one event-loop iteration.

asyncio (and uvloop) run every callback that is ready at the start of an iteration before
they look at timers or sockets again. When many tasks become ready together and each starts
a synchronous step of a few milliseconds, the iteration lasts as long as all of them: every
other socket, ping and probe waits. botocore prepares, serializes and signs a request
synchronously (1-5 ms of CPU, more for the first call of an operation): with twenty speakers
arriving together, six sessions' requests in one iteration held the loop for 33 ms.

`TurnPacer.turn()` lets at most `per_turn` callers through per iteration; the others wait,
first come first served, for the following iterations. Nothing else is limited: requests
already sent stay in flight, so the cost is a few iterations of delay, not throughput.
"""

from __future__ import annotations

import asyncio
from collections import deque


class TurnPacer:
    """At most about `per_turn` callers of `turn()` pass per event-loop iteration."""

    def __init__(self, per_turn: int) -> None:
        if per_turn < 1:
            raise ValueError("per_turn must be at least 1")
        self.per_turn = per_turn
        self._passed = 0  # callers let through since the last reset
        self._reset_pending = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def turn(self) -> None:
        """Return in this iteration if it has room (and nobody waits), else in a later one."""
        if self._passed < self.per_turn and not self._waiting:
            self._pass()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._schedule_reset()
        await waiter  # a cancelled waiter is skipped when its turn comes

    def _pass(self) -> None:
        self._passed += 1
        self._schedule_reset()

    def _schedule_reset(self) -> None:
        # call_soon from inside an iteration runs in the next one: the count lasts one turn.
        if not self._reset_pending:
            self._reset_pending = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._reset_pending = False
        self._passed = 0
        while self._waiting and self._passed < self.per_turn:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._pass()
        if self._waiting:
            self._schedule_reset()
