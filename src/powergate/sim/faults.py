"""Fault injection and counters shared by the simulator's protocol faces and fleets.

``Faults`` decides, from one seeded ``random.Random`` per fleet, whether a reply is dropped, delayed or
garbled, so a run with the same seed and the same request order injects the same faults. ``SimStats`` counts
what the fleet did (frames answered, readings published, errors) for the live summary line.

Invariants: rates are probabilities in [0, 1]; a delay is drawn between ``delay_min_ms`` and ``delay_max_ms``
(both bounded by ``MAX_DELAY_MS``); garbling flips one byte, never changes the length (a real line error).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MAX_DELAY_MS = 10_000


@dataclass(slots=True)
class Faults:
    drop: float = 0.0
    garble: float = 0.0
    delay_min_ms: int = 0
    delay_max_ms: int = 0
    seed: int = 1
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        assert 0.0 <= self.drop <= 1.0 and 0.0 <= self.garble <= 1.0, (self.drop, self.garble)
        assert 0 <= self.delay_min_ms <= self.delay_max_ms <= MAX_DELAY_MS, (
            self.delay_min_ms,
            self.delay_max_ms,
        )
        self.rng = random.Random(self.seed)

    def should_drop(self) -> bool:
        return self.drop > 0 and self.rng.random() < self.drop

    def delay_s(self) -> float:
        """How long the reply waits (a meter answers in 20-500 ms at 2400 baud; 0 in unit tests)."""
        if self.delay_max_ms == 0:
            return 0.0
        return self.rng.randint(self.delay_min_ms, self.delay_max_ms) / 1000

    def maybe_garble(self, data: bytes) -> bytes:
        if not data or self.garble <= 0 or self.rng.random() >= self.garble:
            return data
        position = self.rng.randrange(len(data))
        flipped = data[position] ^ (1 << self.rng.randrange(8))
        return data[:position] + bytes([flipped]) + data[position + 1 :]


@dataclass(slots=True)
class SimStats:
    """What a fleet has done so far; faces add to it, the CLI prints it."""

    meters: int = 0
    connections: int = 0
    frames_answered: int = 0
    readings_published: int = 0
    events_published: int = 0
    commands_done: int = 0
    dropped: int = 0
    garbled: int = 0
    errors: int = 0
    last_error: str = ""

    def error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message[:200]

    def summary(self) -> str:
        text = (
            f"meters {self.meters}  connections {self.connections}  frames answered {self.frames_answered}  "
            f"readings published {self.readings_published}  events {self.events_published}  "
            f"commands {self.commands_done}  dropped {self.dropped}  garbled {self.garbled}  "
            f"errors {self.errors}"
        )
        return text + (f"  (last: {self.last_error})" if self.last_error else "")
