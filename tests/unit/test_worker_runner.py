"""The job runner of the worker and scheduler roles: due jobs run, a failing job never stops the others."""

from __future__ import annotations

import asyncio
import datetime as dt

from powergate.services.worker import Job, JobRunner

NOON = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def test_a_failing_job_is_counted_and_the_other_jobs_keep_running() -> None:
    seen: list[dt.datetime] = []

    async def good(now: dt.datetime) -> str | None:
        seen.append(now)
        return "did something"

    async def bad(now: dt.datetime) -> str | None:
        raise RuntimeError("the database went away")

    runner = JobRunner("test", [Job("bad", 0.01, bad), Job("good", 0.01, good)], clock=lambda: NOON)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(running, 5)

    asyncio.run(scenario())
    assert runner.stats["bad"].failures >= 3 and runner.stats["bad"].runs == 0
    assert runner.stats["bad"].last_error == "RuntimeError: the database went away"
    assert runner.stats["good"].runs >= 3 and runner.stats["good"].last_summary == "did something"
    assert set(seen) == {NOON}, "jobs get the injected clock's now"


def test_a_job_runs_at_once_and_then_only_after_its_interval() -> None:
    runs: list[str] = []

    async def slow_job(now: dt.datetime) -> str | None:
        runs.append("slow")
        return None

    runner = JobRunner("test", [Job("slow", 60.0, slow_job)], clock=lambda: NOON)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(running, 5)

    asyncio.run(scenario())
    assert runs == ["slow"]
