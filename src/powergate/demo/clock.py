"""Demo time: an accelerated clock shared by the virtual meters and the platform.

``AcceleratedClock(speed=60)`` runs 60 demo seconds per real second (one real minute is a demo hour), from
``start`` (default: the real time when it is made). Everything in the demo reads it: the meters' consumption
profiles (``epoch_s``), the head-end, ingest, the balance policy, payments, notifications and the web app
(``WebSettings.clock``), so a reading's timestamp, its energy and the power rating derives from them agree.

Invariants: monotonic (it is built on ``time.monotonic``), timezone-aware UTC, ``speed`` bounded (1..3600).
Real-time bounds (socket timeouts, poll intervals) stay in real seconds; a duration the platform measures on this
clock (a command's lease, a notification's claim) must be scaled by ``speed`` with ``demo_seconds``.
"""

from __future__ import annotations

import datetime as dt
import time

MAX_SPEED = 3600


class AcceleratedClock:
    def __init__(self, speed: float = 60.0, start: dt.datetime | None = None) -> None:
        assert 1 <= speed <= MAX_SPEED, f"speed must be 1..{MAX_SPEED}, got {speed}"
        assert start is None or start.tzinfo is not None, "start must be timezone-aware"
        self.speed = speed
        self.start = (start or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        self._origin = time.monotonic()

    def __call__(self) -> dt.datetime:
        return self.now()

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=(time.monotonic() - self._origin) * self.speed)

    def epoch_s(self) -> int:
        """Demo time as integer Unix seconds (what the virtual meters advance to)."""
        return int(self.now().timestamp())

    def demo_seconds(self, real_s: float) -> float:
        """How many demo seconds pass in ``real_s`` real seconds."""
        return real_s * self.speed

    def real_seconds(self, demo_s: float) -> float:
        return demo_s / self.speed
