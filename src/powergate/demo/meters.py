"""The demo's virtual meters: one fleet per transport, matched meter by meter to the seeded meters.

- DL/T 645-2007 through DTUs (apartments, their water meters, shops): virtual DTUs of ``METERS_PER_DTU`` meters
  dial in over TCP to the head-end's DTU server; one request at a time per RS485 bus, replies after 5-40 ms.
- Modbus TCP (offices): one gateway per floor, the meters as unit ids 1..6, read by the head-end's Modbus link.
- MQTT (the dormitory's 4G meters): connections to the embedded broker, readings pushed every read interval;
  without a broker the dormitory's meters are served through DTUs instead (``plan(..., mqtt=False)``).

Every virtual meter is a meter-side prepaid meter; the demo bills on the platform, so each one is given a balance
it can never use up (the platform trips and closes it with relay commands, as for any platform-billed meter).
Profiles follow the room (residential, shop, dormitory, office, water); the watched rooms draw a steady load
(``Watch.constant_load_w``), so their story unfolds at the same pace at any hour of the demo day.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from powergate.domain.energy import Commodity
from powergate.domain.structure import RoomUse
from powergate.headend.model import MeterEndpoint, Transport
from powergate.sim.faults import Faults
from powergate.sim.fleet import Fleet, FleetOptions, split
from powergate.sim.meter import VirtualMeter
from powergate.sim.profiles import PROFILES, LoadProfile, ProfileKind

from .seed import SeededMeter

METERS_PER_DTU = 12
METERS_PER_MODBUS_GATEWAY = 6
METERS_PER_MQTT_CONNECTION = 25
PLATFORM_BILLED_METER_BALANCE = 10**12
"""What each virtual meter holds of its own (meter-side) balance: far more than it can ever use."""
MQTT_SITE = "demo-dorm"
DELAY_MS = (5, 40)
SEEDS = {"dtu": 101, "modbus": 102, "mqtt": 103}

PROFILE_OF_USE = {
    RoomUse.APARTMENT: ProfileKind.RESIDENTIAL,
    RoomUse.SHOP: ProfileKind.SHOP,
    RoomUse.DORMITORY: ProfileKind.DORMITORY,
    RoomUse.OFFICE: ProfileKind.OFFICE,
    RoomUse.PUBLIC_AREA: ProfileKind.OFFICE,
}


def constant_profile(watts: int) -> LoadProfile:
    """A steady ``watts`` load at every hour of every day, without noise."""
    return LoadProfile(
        kind=ProfileKind.RESIDENTIAL,
        base_w=watts,
        peak_w=0,
        workday_permille=(0,) * 24,
        weekend_permille=(0,) * 24,
        noise_permille=0,
        size_min_permille=1000,
        size_max_permille=1000,
    )


@dataclass(frozen=True, slots=True)
class TransportPlan:
    mode: str
    """``dtu``, ``modbus`` or ``mqtt``."""
    meters: tuple[SeededMeter, ...]


def plan(seeded: Sequence[SeededMeter], *, mqtt: bool, modbus: bool = True) -> list[TransportPlan]:
    """Which transport carries which seeded meter (a transport left out sends its meters through DTUs)."""
    by_mode: dict[str, list[SeededMeter]] = {"dtu": [], "modbus": [], "mqtt": []}
    for meter in seeded:
        if meter.use is RoomUse.OFFICE and modbus:
            by_mode["modbus"].append(meter)
        elif meter.use is RoomUse.DORMITORY and mqtt:
            by_mode["mqtt"].append(meter)
        else:
            by_mode["dtu"].append(meter)
    return [TransportPlan(mode, tuple(meters)) for mode, meters in by_mode.items() if meters]


@dataclass(slots=True)
class DemoFleet:
    """One fleet and the seeded meter behind each of its virtual meters."""

    mode: str
    fleet: Fleet
    pairs: list[tuple[SeededMeter, VirtualMeter]]

    def virtual(self, meter_id: str) -> VirtualMeter | None:
        return next((vm for sm, vm in self.pairs if sm.meter_id == meter_id), None)

    def endpoints(self) -> list[MeterEndpoint]:
        """How the head-end reaches each meter (Modbus gateways must be listening: their ports are read back)."""
        found: list[MeterEndpoint] = []
        options = self.fleet.options
        if self.mode == "dtu":
            for index, group in enumerate(split(self.fleet.meters, options.dtus)):
                dtu_id = f"86{options.seed % 1000:03d}{index:010d}"
                found.extend(self._endpoint(vm, Transport.DLT645, vm.address, dtu_id) for vm in group)
        elif self.mode == "modbus":
            ports = [int(face[2]) for face in self.fleet.faces]  # type: ignore[index]
            assert ports, "the Modbus gateways are not listening yet"
            for group, port in zip(split(self.fleet.meters, options.dtus), ports, strict=True):
                for unit, vm in enumerate(group, start=1):
                    found.append(self._endpoint(vm, Transport.MODBUS, str(unit), f"{options.listen[0]}:{port}"))
        else:
            found.extend(self._endpoint(vm, Transport.MQTT, vm.address, options.site) for vm in self.fleet.meters)
        return found

    def _endpoint(self, vm: VirtualMeter, transport: Transport, address: str, link: str) -> MeterEndpoint:
        seeded = next(sm for sm, meter in self.pairs if meter is vm)
        return MeterEndpoint(seeded.meter_id, transport, address, link)


def build(
    transport: TransportPlan,
    clock_s: Callable[[], int],
    *,
    headend: tuple[str, int] | None = None,
    broker: tuple[str, int] | None = None,
    mqtt_interval_s: float = 10.0,
) -> DemoFleet:
    count = len(transport.meters)
    per_group = {"dtu": METERS_PER_DTU, "modbus": METERS_PER_MODBUS_GATEWAY, "mqtt": METERS_PER_MQTT_CONNECTION}
    seed = SEEDS[transport.mode]
    options = FleetOptions(
        meters=count,
        dtus=max(1, math.ceil(count / per_group[transport.mode])),
        mode=transport.mode,
        headend=headend,
        broker=broker,
        listen=("127.0.0.1", 0),
        interval_s=mqtt_interval_s,
        heartbeat_s=30.0,
        seed=seed,
        site=MQTT_SITE,
        faults=Faults(delay_min_ms=DELAY_MS[0], delay_max_ms=DELAY_MS[1], seed=seed),
    )
    fleet = Fleet(options, clock=clock_s)
    pairs = list(zip(transport.meters, fleet.meters, strict=True))
    for seeded, virtual in pairs:
        prepare(seeded, virtual)
    return DemoFleet(transport.mode, fleet, pairs)


def prepare(seeded: SeededMeter, virtual: VirtualMeter) -> None:
    """Fit a virtual meter to the room it is installed in."""
    virtual.balance_micros = PLATFORM_BILLED_METER_BALANCE
    if seeded.commodity == "water":
        virtual.commodity = Commodity.WATER
        virtual.profile = PROFILES[ProfileKind.WATER]
    elif seeded.watch is not None and seeded.watch.constant_load_w is not None:
        virtual.profile = constant_profile(seeded.watch.constant_load_w)
    else:
        virtual.profile = PROFILES[PROFILE_OF_USE[seeded.use]]
