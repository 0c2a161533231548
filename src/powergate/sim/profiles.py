"""Seeded load profiles: how much a simulated meter draws at any minute, without keeping any state.

A profile answers ``rate_at(seed, minute)``: the power in W (electricity) or the flow in L/h (water) that
a meter with that ``seed`` draws during the local minute ``minute`` (minutes since 1970-01-01 in the meter's
local time). The answer is a pure function of ``(profile, seed, minute)``: it is computed from an integer
hash, never from a ``random.Random`` (whose 2.5 KB of state per meter would cost 25 MB for a fleet of
10,000). So a meter advanced once over an hour or sixty times over a minute each accrues exactly the same
energy, and the same seed always gives the same fleet.

Invariants:
- rates are non-negative integers (W or L/h); a rate is constant within one minute;
- appliance events (kettles, immersion heaters, hair dryers on dormitory profiles, showers on water profiles)
  are step changes of a known size and duration, so a later load-control feature can be tested against the
  ground truth that ``appliances_at`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MINUTES_PER_DAY = 1440
_MASK64 = (1 << 64) - 1
_EPOCH_WEEKDAY = 3
"""1970-01-01 was a Thursday (Monday is 0)."""


def mix64(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 finaliser folded over the values): fast, stateless, seedable."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state ^= state >> 31
        state = state * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state


class ProfileKind(StrEnum):
    RESIDENTIAL = "residential"
    SHOP = "shop"
    OFFICE = "office"
    DORMITORY = "dormitory"
    WATER = "water"


@dataclass(frozen=True, slots=True)
class Appliance:
    """An appliance that switches on now and then: a step of ``power_min_w..power_max_w`` for a few minutes.

    Time is cut into slots of ``slot_minutes``; in each slot whose starting hour is in ``hours`` the appliance
    runs once with probability ``chance_permille``/1000, for ``minutes_min..minutes_max`` minutes.
    """

    name: str
    power_min_w: int
    power_max_w: int
    minutes_min: int
    minutes_max: int
    slot_minutes: int
    chance_permille: int
    hours: frozenset[int]

    def __post_init__(self) -> None:
        assert 0 < self.power_min_w <= self.power_max_w, self
        assert 0 < self.minutes_min <= self.minutes_max < self.slot_minutes, self
        assert 0 <= self.chance_permille <= 1000, self

    def rate_at(self, seed: int, index: int, minute: int) -> int:
        slot, offset_in_slot = divmod(minute, self.slot_minutes)
        start_hour = (slot * self.slot_minutes % MINUTES_PER_DAY) // 60
        if start_hour not in self.hours:
            return 0
        draw = mix64(seed, index, slot)
        if draw % 1000 >= self.chance_permille:
            return 0
        draw >>= 10
        duration = self.minutes_min + draw % (self.minutes_max - self.minutes_min + 1)
        draw >>= 8
        start = draw % (self.slot_minutes - duration + 1)
        if not start <= offset_in_slot < start + duration:
            return 0
        draw >>= 8
        return self.power_min_w + draw % (self.power_max_w - self.power_min_w + 1)


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """A daily shape (per-mille of ``peak_w`` by hour, workday and weekend) plus noise and appliances.

    Each meter scales the profile by a size factor drawn once from its seed (``size_min_permille`` to
    ``size_max_permille``), so two shops are never identical.
    """

    kind: ProfileKind
    base_w: int
    peak_w: int
    workday_permille: tuple[int, ...]
    weekend_permille: tuple[int, ...]
    noise_permille: int
    appliances: tuple[Appliance, ...] = ()
    size_min_permille: int = 600
    size_max_permille: int = 1400

    def __post_init__(self) -> None:
        assert len(self.workday_permille) == 24 and len(self.weekend_permille) == 24, self.kind
        assert 0 <= self.noise_permille < 1000, self.kind
        assert 0 < self.size_min_permille <= self.size_max_permille, self.kind

    def size_permille(self, seed: int) -> int:
        spread = self.size_max_permille - self.size_min_permille + 1
        return self.size_min_permille + mix64(seed, 0x5173) % spread

    def rate_at(self, seed: int, minute: int) -> int:
        """Power in W (or flow in L/h) during local ``minute`` (minutes since the epoch, local time)."""
        day, minute_of_day = divmod(minute, MINUTES_PER_DAY)
        weekend = (day + _EPOCH_WEEKDAY) % 7 >= 5
        shape = (self.weekend_permille if weekend else self.workday_permille)[minute_of_day // 60]
        draw = mix64(seed, minute)
        noise = 1000 - self.noise_permille + draw % (2 * self.noise_permille + 1)
        rate = (self.base_w + self.peak_w * shape // 1000) * noise // 1000
        rate = rate * self.size_permille(seed) // 1000
        for index, appliance in enumerate(self.appliances):
            rate += appliance.rate_at(seed, index, minute)
        return rate

    def appliances_at(self, seed: int, minute: int) -> tuple[str, ...]:
        """The names of the appliances running during ``minute``: ground truth for load-signature tests."""
        return tuple(
            appliance.name for index, appliance in enumerate(self.appliances) if appliance.rate_at(seed, index, minute)
        )


_ALL_HOURS = frozenset(range(24))

RESIDENTIAL = LoadProfile(
    kind=ProfileKind.RESIDENTIAL,
    base_w=80,
    peak_w=1800,
    # night standby, breakfast, out at work, cooking and evening peak
    workday_permille=(30, 20, 20, 20, 20, 40, 180, 300, 200, 80, 60, 80,
                      150, 100, 60, 60, 80, 200, 450, 600, 550, 400, 200, 80),
    weekend_permille=(40, 20, 20, 20, 20, 30, 80, 200, 300, 300, 250, 300,
                      350, 250, 200, 200, 250, 350, 500, 600, 550, 450, 250, 100),
    noise_permille=250,
    appliances=(
        Appliance("washing machine", 400, 2000, 30, 60, 480, 150, frozenset({8, 16})),
        Appliance("air conditioner", 800, 1500, 60, 200, 240, 250, frozenset({12, 20})),
    ),
)  # fmt: skip

SHOP = LoadProfile(
    kind=ProfileKind.SHOP,
    base_w=150,
    peak_w=4000,
    # lights and fridges from opening (09:00) to closing (22:00), every day
    workday_permille=(50, 50, 50, 50, 50, 50, 50, 50, 100, 700, 800, 850,
                      900, 900, 850, 850, 850, 900, 950, 950, 900, 800, 300, 50),
    weekend_permille=(50, 50, 50, 50, 50, 50, 50, 50, 100, 750, 900, 950,
                      1000, 1000, 950, 950, 950, 1000, 1000, 1000, 950, 850, 300, 50),
    noise_permille=100,
    size_min_permille=400,
    size_max_permille=2500,
)  # fmt: skip

OFFICE = LoadProfile(
    kind=ProfileKind.OFFICE,
    base_w=200,
    peak_w=6000,
    # working hours on workdays, servers and emergency lighting otherwise
    workday_permille=(30, 30, 30, 30, 30, 30, 50, 200, 700, 900, 950, 950,
                      700, 850, 950, 950, 900, 800, 400, 200, 100, 50, 30, 30),
    weekend_permille=(30,) * 24,
    noise_permille=150,
    size_min_permille=300,
    size_max_permille=3000,
)  # fmt: skip

DORMITORY = LoadProfile(
    kind=ProfileKind.DORMITORY,
    base_w=40,
    peak_w=500,
    # lights, laptops and phone chargers; students are in class in the day on workdays
    workday_permille=(150, 60, 20, 20, 20, 20, 60, 250, 100, 50, 50, 50,
                      300, 200, 50, 50, 50, 150, 400, 600, 700, 800, 700, 400),
    weekend_permille=(300, 150, 50, 20, 20, 20, 20, 50, 150, 300, 400, 450,
                      500, 500, 450, 450, 450, 500, 600, 700, 750, 800, 700, 500),
    noise_permille=200,
    appliances=(
        # forbidden appliances: sharp resistive steps a load-signature detector should catch
        Appliance("kettle", 1800, 2200, 3, 5, 60, 40, frozenset({7, 12, 18, 19, 20, 21, 22})),
        Appliance("immersion heater", 1000, 2000, 10, 20, 120, 80, frozenset({6, 18, 20, 22})),
        Appliance("hair dryer", 1200, 1800, 5, 10, 60, 50, frozenset({7, 8, 21, 22, 23})),
        # allowed: a laptop charger's small step
        Appliance("laptop", 45, 90, 30, 55, 60, 300, _ALL_HOURS),
    ),
    size_min_permille=700,
    size_max_permille=1300,
)  # fmt: skip

WATER = LoadProfile(
    kind=ProfileKind.WATER,
    base_w=0,
    peak_w=60,
    # flow in L/h: taps and toilets follow the household's day
    workday_permille=(0, 0, 0, 0, 0, 50, 400, 700, 300, 100, 100, 150,
                      250, 150, 100, 100, 150, 300, 500, 600, 500, 400, 200, 50),
    weekend_permille=(0, 0, 0, 0, 0, 20, 200, 400, 500, 400, 300, 300,
                      350, 250, 200, 200, 250, 350, 500, 600, 550, 450, 250, 80),
    noise_permille=500,
    appliances=(
        Appliance("shower", 480, 720, 5, 12, 240, 350, frozenset({4, 20})),
        Appliance("washing machine", 300, 600, 10, 20, 480, 120, frozenset({8, 16})),
    ),
)  # fmt: skip

PROFILES: dict[ProfileKind, LoadProfile] = {p.kind: p for p in (RESIDENTIAL, SHOP, OFFICE, DORMITORY, WATER)}


def profile(kind: ProfileKind | str) -> LoadProfile:
    """The profile named ``kind``; ``ValueError`` naming the known kinds otherwise."""
    try:
        return PROFILES[ProfileKind(kind)]
    except ValueError:
        known = ", ".join(k.value for k in ProfileKind)
        raise ValueError(f"profile: unknown kind {kind!r}; known: {known}") from None
