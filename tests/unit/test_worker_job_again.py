"""A job that stopped at its limit with work left (``Job.again``) runs again at once, the other jobs between."""

from __future__ import annotations

import asyncio
import datetime as dt

from powergate.services.worker import Job, JobRunner

NOON = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def test_a_job_with_work_left_runs_again_at_once_and_the_others_keep_their_turn() -> None:
    order: list[str] = []
    left = [3]

    async def drain(now: dt.datetime) -> str | None:
        order.append("drain")
        left[0] = max(0, left[0] - 1)
        await asyncio.sleep(0.01)  # longer than the relay's interval: it is due again after each drain
        return None

    async def relay(now: dt.datetime) -> str | None:
        order.append("relay")
        return None

    jobs = [Job("drain", 60.0, drain, again=lambda: left[0] > 0), Job("relay", 0.001, relay)]
    runner = JobRunner("test", jobs, clock=lambda: NOON)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        deadline = asyncio.get_running_loop().time() + 5
        while order.count("drain") < 3 or order.count("relay") < 3:
            assert asyncio.get_running_loop().time() < deadline, order
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(running, 5)

    asyncio.run(scenario())
    assert order.count("drain") == 3, "runs while work is left, then waits its 60 s interval"
    assert order[:6] == ["drain", "relay"] * 3, "the other due job runs between two drains"
