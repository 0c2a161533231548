"""The virtual prepaid meter bills, trips and records events the way a real meter-side-billing meter does."""

from __future__ import annotations

import datetime as dt
import sys
import tracemalloc
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powergate.domain.money import MICROS_PER_UNIT
from powergate.protocols.dlt645 import decode_data, read_request
from powergate.sim.dlt645_face import answer
from powergate.sim.meter import (
    DEFAULT_SETTINGS,
    MAX_DAILY_FREEZES,
    PROTECT,
    STATUS3_MONEY_PREPAID,
    STATUS3_POWER_PROTECT,
    STATUS3_PRE_TRIP_ALARM,
    STATUS3_RELAY_COMMAND_TRIP,
    STATUS3_RELAY_OPEN,
    Band,
    DailyFreeze,
    EventKind,
    MeterErrorCode,
    MeterSettings,
    RechargeOutcome,
    RelayAction,
    TouTable,
    TripReason,
    VirtualMeter,
)
from powergate.sim.profiles import DORMITORY, PROFILES, RESIDENTIAL, LoadProfile, ProfileKind, profile

T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC, 06:13 local (UTC+8)
YUAN = MICROS_PER_UNIT


@dataclass(frozen=True)
class SteadyLoad:
    """A fake profile: the same power every minute (a LoadProfile look-alike for exact arithmetic)."""

    power_w: int

    def rate_at(self, seed: int, minute: int) -> int:
        return self.power_w


FLAT_PRICE = MeterSettings(prices_micros=(1_000_000,) * 4, alarm1_micros=50 * YUAN, alarm2_micros=20 * YUAN)


def meter(power_w: int = 1000, balance_yuan: int = 100, settings: MeterSettings = FLAT_PRICE) -> VirtualMeter:
    load: LoadProfile = SteadyLoad(power_w)  # type: ignore[assignment]
    return VirtualMeter("000000000001", load, seed=1, now_s=T0, balance_micros=balance_yuan * YUAN,
                        settings=settings)  # fmt: skip


def test_a_steady_1000_w_load_adds_one_kwh_an_hour_and_costs_one_kwh_of_credit() -> None:
    m = meter(1000)
    m.advance(T0 + 3600)
    assert m.total_ticks() == 100
    assert m.total_energy_wh() == 1000
    assert m.balance_micros == 99 * YUAN
    assert m.power_w == 1000


def test_energy_lands_in_the_band_of_the_meters_own_local_time() -> None:
    tou = TouTable.parse("00:00 valley, 08:00 peak, 20:00 flat")
    m = meter(1000, settings=MeterSettings(prices_micros=(4_000_000, 3_000_000, 2_000_000, 1_000_000), tou=tou))
    # T0 is 06:13:20 local: 6400 s of valley then 4400 s of peak
    m.advance(T0 + 3 * 3600)
    assert (m.band_ticks(Band.VALLEY), m.band_ticks(Band.PEAK)) == (177, 122)
    assert (m.band_energy_wh(Band.VALLEY), m.band_energy_wh(Band.PEAK)) == (1777, 1222)
    assert m.total_ticks() == sum(m.band_ticks(b) for b in Band)
    cost = m.band_ticks(Band.VALLEY) * 10_000 + m.band_ticks(Band.PEAK) * 30_000
    assert m.balance_micros == 100 * YUAN - cost


def test_advancing_in_many_small_steps_gives_the_same_registers_as_one_big_step() -> None:
    one = VirtualMeter("000000000001", DORMITORY, seed=7, now_s=T0, balance_micros=500 * YUAN)
    many = VirtualMeter("000000000001", DORMITORY, seed=7, now_s=T0, balance_micros=500 * YUAN)
    one.advance(T0 + 6 * 3600)
    for step in range(1, 6 * 3600 // 37 + 2):
        many.advance(min(T0 + step * 37, T0 + 6 * 3600))
    assert [one.band_ticks(b) for b in Band] == [many.band_ticks(b) for b in Band]
    assert one.balance_micros == many.balance_micros


def test_the_meter_trips_itself_exactly_at_the_tick_that_uses_up_the_credit() -> None:
    m = meter(1000, balance_yuan=1)
    m.advance(T0 + 2 * 3600)
    assert m.relay_open()
    assert m.trip_reasons() == (TripReason.CREDIT,)
    assert m.balance_micros == 0
    assert m.total_ticks() == 100  # 1 kWh at 1 yuan/kWh, not a tick more
    assert m.power_w == 0
    assert m.status_word3() & STATUS3_RELAY_OPEN


def test_an_overdraft_limit_lets_the_balance_go_below_zero_down_to_the_limit() -> None:
    m = meter(1000, balance_yuan=1, settings=MeterSettings(prices_micros=(1_000_000,) * 4,
                                                           overdraft_limit_micros=2 * YUAN))  # fmt: skip
    m.advance(T0 + 10 * 3600)
    assert m.balance_micros == -2 * YUAN
    assert m.remaining_micros() == 0 and m.overdraft_micros() == 2 * YUAN
    assert m.relay_open()


def test_a_recharge_after_a_credit_trip_closes_the_relay_again() -> None:
    m = meter(1000, balance_yuan=1)
    m.advance(T0 + 7200)
    result = m.recharge(1, 10 * YUAN, T0 + 7300)
    assert result.outcome is RechargeOutcome.APPLIED and result.credited
    assert not m.relay_open()
    assert m.balance_micros == 10 * YUAN
    m.advance(T0 + 7300 + 3600)
    assert m.balance_micros == 9 * YUAN


def test_a_recharge_that_leaves_the_balance_below_the_close_allowed_amount_keeps_the_relay_open() -> None:
    m = meter(1000, balance_yuan=1, settings=MeterSettings(prices_micros=(1_000_000,) * 4,
                                                           close_allowed_micros=5 * YUAN))  # fmt: skip
    m.advance(T0 + 7200)
    m.recharge(1, 3 * YUAN, T0 + 7200)
    assert m.relay_open()
    m.recharge(2, 3 * YUAN, T0 + 7200)
    assert not m.relay_open()


@pytest.mark.parametrize(
    ("count", "outcome"),
    [
        (3, RechargeOutcome.ALREADY_APPLIED),
        (2, RechargeOutcome.STALE_COUNT),
        (5, RechargeOutcome.COUNT_GAP),
        (4, RechargeOutcome.APPLIED),
    ],
)
def test_the_purchase_count_must_be_the_last_plus_one(count: int, outcome: RechargeOutcome) -> None:
    m = meter(0)
    for n in (1, 2, 3):
        assert m.recharge(n, YUAN, T0).credited
    before = m.balance_micros
    result = m.recharge(count, 7 * YUAN, T0)
    assert result.outcome is outcome
    assert m.balance_micros == before + (7 * YUAN if outcome is RechargeOutcome.APPLIED else 0)
    assert str(count) in result.message


def test_a_recharge_above_the_hoarding_limit_is_refused_and_does_not_use_up_the_count() -> None:
    m = meter(0, balance_yuan=90, settings=MeterSettings(hoarding_limit_micros=100 * YUAN))
    refused = m.recharge(1, 20 * YUAN, T0)
    assert refused.outcome is RechargeOutcome.ABOVE_HOARDING_LIMIT
    assert "hoarding" in refused.message
    assert m.purchase_count == 0 and m.balance_micros == 90 * YUAN
    assert m.recharge(1, 10 * YUAN, T0).credited


def test_a_zero_or_negative_recharge_is_refused_with_a_message_naming_the_amount() -> None:
    result = meter(0).recharge(1, 0, T0)
    assert result.outcome is RechargeOutcome.INVALID_AMOUNT
    assert result.message.startswith("amount")


def test_alarm_levels_follow_alarm_amounts_one_and_two() -> None:
    m = meter(10_000, balance_yuan=60)  # 10 kWh an hour at 1 yuan/kWh
    assert m.alarm_level() == 0
    m.advance(T0 + 3600 + 60)
    assert m.alarm_level() == 1
    m.advance(T0 + 4 * 3600 + 60)
    assert m.alarm_level() == 2
    assert m.status_word3() & STATUS3_PRE_TRIP_ALARM
    assert [n.detail for n in m.drain_notices() if n.kind == "alarm"] == ["level 1", "level 2"]


def test_a_load_above_the_power_limit_trips_the_relay_and_records_an_overload() -> None:
    m = meter(5000, settings=MeterSettings(power_limit_w=4000))
    m.advance(T0 + 120)
    assert m.trip_reasons() == (TripReason.OVERLOAD,)
    assert m.event_count(EventKind.OVERLOAD) == 1
    assert m.relay_command(RelayAction.CLOSE_NOW, T0 + 130) is None
    assert not m.relay_open()


def test_power_protect_never_trips_neither_on_credit_nor_overload_nor_command() -> None:
    m = meter(5000, balance_yuan=1, settings=MeterSettings(prices_micros=(1_000_000,) * 4, power_limit_w=4000))
    assert m.relay_command(RelayAction.PROTECT_ON, T0) is None
    m.advance(T0 + 3600)
    assert not m.relay_open()
    assert m.balance_micros < 0  # still billed
    refused = m.relay_command(RelayAction.TRIP, T0 + 3600)
    assert refused is not None and refused.code is MeterErrorCode.POWER_PROTECT
    assert m.status_word3() & STATUS3_POWER_PROTECT
    m.relay_command(RelayAction.PROTECT_OFF, T0 + 3600)
    assert m.relay_open()
    assert m.trip_reasons() == (TripReason.CREDIT,)


def test_a_trip_command_opens_the_relay_until_a_close_command() -> None:
    m = meter(1000)
    assert m.relay_command(RelayAction.TRIP, T0) is None
    m.advance(T0 + 3600)
    assert m.total_ticks() == 0
    assert m.status_word3() == STATUS3_MONEY_PREPAID | STATUS3_RELAY_OPEN | STATUS3_RELAY_COMMAND_TRIP
    m.recharge(1, YUAN, T0 + 3600)  # a recharge lifts credit trips only
    assert m.relay_open()
    m.relay_command(RelayAction.CLOSE_ALLOWED, T0 + 3600)
    assert not m.relay_open()
    assert m.status_word3() == STATUS3_MONEY_PREPAID


def test_a_relay_command_past_its_valid_until_time_is_refused() -> None:
    m = meter(1000)
    error = m.relay_command(RelayAction.TRIP, T0 + 10, valid_until_s=T0)
    assert error is not None and error.code is MeterErrorCode.EXPIRED
    assert not m.relay_open()


def test_a_power_failure_stops_consumption_and_is_recorded_with_its_start_and_end() -> None:
    m = meter(1000)
    m.begin_event(EventKind.POWER_FAIL, T0 + 600)
    m.advance(T0 + 3600)
    assert m.total_energy_wh() == 166  # 10 minutes at 1 kW
    assert m.voltage_dv() == 0
    m.end_event(EventKind.POWER_FAIL, T0 + 3600)
    assert m.event_count(EventKind.POWER_FAIL) == 1
    assert m.last_event(EventKind.POWER_FAIL) == (T0 + 600, T0 + 3600)
    m.advance(T0 + 7200)
    assert m.total_energy_wh() == 1166


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_event_kind_can_be_injected_and_is_counted(kind: EventKind) -> None:
    m = meter(1000)
    assert m.last_event(kind) is None
    m.begin_event(kind, T0 + 5)
    m.end_event(kind, T0 + 65)
    m.begin_event(kind, T0 + 100)
    assert m.event_count(kind) == 2
    assert m.last_event(kind) == (T0 + 100, 0)
    assert m.event_in_progress(kind)
    assert any(n.kind == "event" and n.detail == kind.name.lower() for n in m.drain_notices())


def test_current_loss_draws_power_but_meters_nothing_and_reverse_current_shows_negative_power() -> None:
    m = meter(1000)
    m.begin_event(EventKind.CURRENT_LOSS, T0)
    m.advance(T0 + 3600)
    assert m.total_ticks() == 0 and m.current_ma() == 0
    m.end_event(EventKind.CURRENT_LOSS, T0 + 3600)
    m.begin_event(EventKind.REVERSE_CURRENT, T0 + 3600)
    m.advance(T0 + 3660)
    assert m.signed_power_w() == -1000
    assert m.current_ma() < 0


def test_instantaneous_values_are_plausible() -> None:
    m = meter(2200)
    m.advance(T0 + 60)
    assert 2134 <= m.voltage_dv() <= 2266
    assert 925 <= m.power_factor_milli() <= 995
    assert 4995 <= m.frequency_chz() <= 5005
    assert 9_000 <= m.current_ma() <= 11_000


def test_the_password_and_the_operator_code_are_checked() -> None:
    m = meter(settings=MeterSettings(passwords=((2, 0x123456),), operator_codes=frozenset({0x11223344})))
    assert m.check_password(2, 0x123456)
    assert not m.check_password(2, 0x123457)
    assert not m.check_password(4, 0x123456)
    assert m.check_operator(0x11223344) and not m.check_operator(1)
    assert meter().check_operator(12345)  # no operator list: any code is recorded and accepted


def test_writing_a_setting_gives_this_meter_its_own_copy_and_bad_values_name_the_field() -> None:
    m, sibling = meter(), meter()
    assert m.update_settings(T0, alarm1_micros=80 * YUAN) is None
    assert m.settings.alarm1_micros == 80 * YUAN and sibling.settings is FLAT_PRICE
    error = m.update_settings(T0, prices_micros=(1_000_050, 1, 1, 1))
    assert error is not None and error.message.startswith("prices_micros[sharp]")
    unknown = m.update_settings(T0, colour=1)
    assert unknown is not None and unknown.code is MeterErrorCode.UNKNOWN_FIELD


def test_setting_the_clock_moves_the_tou_band_without_losing_energy() -> None:
    m = meter(1000, settings=MeterSettings(tou=TouTable.parse("00:00 valley, 12:00 peak")))
    m.set_clock(T0 + 6 * 3600, T0)  # now 12:13 local on the meter
    m.advance(T0 + 3600)
    assert m.band_energy_wh(Band.PEAK) == 1000
    assert m.meter_time_s(T0 + 3600) == T0 + 7 * 3600


def test_tou_table_text_errors_name_the_bad_entry() -> None:
    with pytest.raises(ValueError, match="'25:00 peak'"):
        TouTable.parse("00:00 valley, 25:00 peak")
    with pytest.raises(ValueError, match="00:00"):
        TouTable.parse("01:00 valley")
    with pytest.raises(ValueError, match="'08:00 lunch'"):
        TouTable.parse("00:00 valley, 08:00 lunch")


@pytest.mark.parametrize("kind", list(ProfileKind))
def test_every_profile_gives_a_plausible_reproducible_day(kind: ProfileKind) -> None:
    load = profile(kind)
    day = [load.rate_at(42, 28_000_000 + m) for m in range(1440)]
    assert day == [load.rate_at(42, 28_000_000 + m) for m in range(1440)]
    assert all(rate >= 0 for rate in day)
    assert 0 < sum(day) / 60 < 100_000  # Wh (or L) a day
    assert day != [load.rate_at(43, 28_000_000 + m) for m in range(1440)]


def test_dormitory_profiles_contain_forbidden_appliance_spikes_with_ground_truth() -> None:
    seen: set[str] = set()
    for seed in range(20):
        for minute in range(28_000_000, 28_000_000 + 1440):
            names = DORMITORY.appliances_at(seed, minute)
            seen.update(names)
            if "kettle" in names:
                assert DORMITORY.rate_at(seed, minute) >= 1800
    assert {"kettle", "immersion heater", "hair dryer"} <= seen


def test_unknown_profile_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="residential"):
        profile("factory")
    assert profile("shop") is PROFILES[ProfileKind.SHOP]


def test_a_meter_stays_small_in_memory() -> None:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    meters = [VirtualMeter(f"{i:012d}", RESIDENTIAL, seed=i, now_s=T0, band_ticks=(i, 2 * i, 3 * i, 4 * i))
              for i in range(2000)]  # fmt: skip
    for m in meters:
        m.advance(T0 + 600)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / len(meters) < 600, grown / len(meters)
    assert sys.getsizeof(meters[0]) < 200


# -- daily freeze ----------------------------------------------------------------------------------------------

MIDNIGHT = T0 + 64_000  # 2023-11-15 00:00 local (UTC+8): 17 h 46 min 40 s after T0
DAY = 86_400
TICKS_PER_DAY = 2400  # 1000 W for 24 h = 24 kWh
AT_MIDNIGHT = (200, 600, 700, 277)
"""Sharp, peak, flat, valley ticks from T0 (06:13:20) to 00:00 at 1000 W under the default TOU table."""


def test_crossing_local_midnight_freezes_the_registers_as_they_stood_at_00_00() -> None:
    m = meter(1000)
    assert m.frozen_days() == 0 and m.frozen_day(1) is None
    m.advance(MIDNIGHT - 1)
    assert m.frozen_days() == 0
    m.advance(MIDNIGHT + 3600)
    # 64,000 s at 1000 W = 1777.7 ticks before midnight; the hour after it is not in the freeze
    assert m.frozen_day(1) == DailyFreeze(MIDNIGHT, 1777, AT_MIDNIGHT)
    assert m.total_ticks() == 1877 and m.frozen_days() == 1


def test_an_advance_that_ends_exactly_at_midnight_freezes_once_and_the_next_does_not_freeze_again() -> None:
    m = meter(1000)
    m.advance(MIDNIGHT)
    assert m.frozen_day(1) == DailyFreeze(MIDNIGHT, 1777, AT_MIDNIGHT)
    m.advance(MIDNIGHT + 60)
    m.advance(MIDNIGHT + DAY - 60)
    assert m.frozen_days() == 1


def test_several_midnights_in_one_advance_give_one_freeze_each_newest_first() -> None:
    one = meter(1000)
    steps = meter(1000)
    one.advance(MIDNIGHT + 2 * DAY + 5)  # the midnights at MIDNIGHT, + 1 day, + 2 days
    for now in range(T0, MIDNIGHT + 2 * DAY + 5, 7_777):
        steps.advance(now)
    steps.advance(MIDNIGHT + 2 * DAY + 5)
    assert one.frozen_days() == 3
    for last in (1, 2, 3):
        freeze = one.frozen_day(last)
        assert freeze is not None and freeze == steps.frozen_day(last)
        assert freeze.meter_time_s == MIDNIGHT + (3 - last) * DAY
        assert freeze.total_ticks == 1777 + (3 - last) * TICKS_PER_DAY
        assert freeze.total_ticks == sum(freeze.band_ticks)
    assert one.frozen_day(4) is None


def test_the_freeze_follows_the_meters_own_clock_and_utc_offset() -> None:
    load: LoadProfile = SteadyLoad(1000)  # type: ignore[assignment]
    fast = VirtualMeter("000000000002", load, seed=1, now_s=T0, settings=FLAT_PRICE, clock_offset_s=7200)
    utc = VirtualMeter("000000000003", load, seed=1, now_s=T0, settings=MeterSettings(utc_offset_minutes=0))
    fast.advance(MIDNIGHT - 7200)  # the meter runs two hours fast: its 00:00 comes at 22:00 true local time
    freeze = fast.frozen_day(1)
    assert freeze is not None and freeze.meter_time_s == MIDNIGHT
    assert freeze.total_ticks == (64_000 - 7200) * 1000 // 36_000
    utc.advance(T0 + DAY)  # T0 is 22:13:20 UTC: its midnight is 6,400 s later
    freeze = utc.frozen_day(1)
    assert freeze is not None and freeze.meter_time_s == T0 + 6_400 and freeze.meter_time_s % DAY == 0


def test_a_power_failure_does_not_skip_the_freeze_and_a_clock_set_across_midnight_does_not_make_one() -> None:
    failed = meter(1000)
    failed.begin_event(EventKind.POWER_FAIL, MIDNIGHT - 3600)
    failed.advance(MIDNIGHT + 3600)
    assert failed.frozen_day(1) == DailyFreeze(MIDNIGHT, 1677, (200, 600, 700, 177))  # no 23:00 valley hour
    jumped = meter(1000)
    jumped.set_clock(MIDNIGHT + 600, MIDNIGHT - 600)
    jumped.advance(MIDNIGHT)
    assert jumped.frozen_days() == 0


def test_the_meter_keeps_only_the_last_62_freezes_in_about_20_bytes_a_day() -> None:
    m = meter(1000, balance_yuan=10_000)
    m.advance(MIDNIGHT + 70 * DAY + 1)
    assert m.frozen_days() == MAX_DAILY_FREEZES == 62
    newest, oldest = m.frozen_day(1), m.frozen_day(62)
    assert newest is not None and newest.meter_time_s == MIDNIGHT + 70 * DAY
    assert oldest is not None and oldest.meter_time_s == MIDNIGHT + 9 * DAY
    assert oldest.total_ticks == 1777 + 9 * TICKS_PER_DAY
    assert m.frozen_day(63) is None
    assert sys.getsizeof(m._freezes) < 62 * 20 + 200  # 5 x 32-bit words a day, plus the array's header


def read_value(m: VirtualMeter, di: int, now_s: int) -> object:
    reply = answer(m, read_request(m.address, di), now_s)
    assert reply is not None
    return reply.data if reply.error else decode_data(di, reply.data[4:])


def test_the_daily_freeze_is_read_over_dlt645_and_a_freeze_not_made_yet_is_no_data() -> None:
    m = meter(1000)
    assert read_value(m, 0x05060001, T0) == b"\x02", "no freeze yet: error 02H (no requested data)"
    m.advance(MIDNIGHT + 2 * DAY + 60)
    now = MIDNIGHT + 2 * DAY + 60
    # meter-local 00:00 of 18, 17 and 16 November; energy in Wh: total, sharp, peak, flat, valley
    assert read_value(m, 0x05060001, now) == dt.datetime(2023, 11, 18, 0, 0)
    newest = m.frozen_day(1)
    assert newest is not None and newest.total_ticks == 1777 + 2 * TICKS_PER_DAY
    assert read_value(m, 0x05060101, now) == (newest.total_ticks * 10, *(t * 10 for t in newest.band_ticks))
    assert read_value(m, 0x05060003, now) == dt.datetime(2023, 11, 16, 0, 0)
    assert read_value(m, 0x05060103, now) == (17_770, 2000, 6000, 7000, 2770)
    assert read_value(m, 0x05060004, now) == b"\x02"
    assert read_value(m, 0x05060104, now) == b"\x02"


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=4 * 3600),
            st.sampled_from(["advance", "recharge", "repeat", "trip", "close", "protect", "unprotect", "event"]),
            st.integers(min_value=1, max_value=200),
        ),
        max_size=30,
    ),
    power_w=st.integers(min_value=0, max_value=12_000),
    balance_yuan=st.integers(min_value=-5, max_value=300),
)
def test_the_balance_never_goes_up_without_a_recharge_and_a_count_never_credits_twice(
    steps: list[tuple[int, str, int]], power_w: int, balance_yuan: int
) -> None:
    m = meter(power_w, balance_yuan, settings=MeterSettings(overdraft_limit_micros=5 * YUAN))
    now = T0
    credited: dict[int, int] = {}
    for gap_s, action, amount_yuan in steps:
        now += gap_s
        before = m.balance_micros
        if action == "recharge":
            result = m.recharge(m.purchase_count + 1, amount_yuan * YUAN, now)
            if result.credited:
                credited[result.purchase_count] = amount_yuan * YUAN
        elif action == "repeat":
            result = m.recharge(m.purchase_count, amount_yuan * YUAN, now)
            assert not result.credited
        elif action == "trip":
            m.relay_command(RelayAction.TRIP, now)
        elif action == "close":
            m.relay_command(RelayAction.CLOSE_NOW, now)
        elif action == "protect":
            m.relay_command(RelayAction.PROTECT_ON, now)
        elif action == "unprotect":
            m.relay_command(RelayAction.PROTECT_OFF, now)
        elif action == "event":
            m.begin_event(EventKind(amount_yuan % len(EventKind)), now)
        else:
            m.advance(now)
        gained = m.balance_micros - before
        assert gained <= (credited.get(m.purchase_count, 0) if action == "recharge" else 0)
        # the meter never bills more than the energy it registered, at the meter's prices
        price = DEFAULT_SETTINGS.prices_micros
        assert sum(m.band_ticks(b) * price[b] // 100 for b in Band) == (
            balance_yuan * YUAN + m.purchased_micros - m.balance_micros
        )
        assert m.purchased_micros == sum(credited.values())
        if not m.relay_open() and not m.flags & PROTECT:
            # supply is on only while the balance is above minus the overdraft limit
            assert m.balance_micros > -5 * YUAN


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--meters", "0"], "--meters"),
        (["--mode", "mqtt"], "--broker"),
        (["--mode", "dtu"], "--headend"),
        (["--mode", "dtu", "--headend", "localhost"], "--headend"),
        (["--mode", "modbus", "--delay-ms", "500-20"], "--delay-ms"),
        (["--mode", "modbus", "--load-scale", "1.2345"], "--load-scale"),
        (["--mode", "modbus", "--drop", "1.5"], "--drop"),
    ],
)
def test_powergate_sim_refuses_a_bad_option_and_names_it(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from powergate.cli import main

    assert main(["sim", *argv]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("event", [None, EventKind.REVERSE_CURRENT, EventKind.CURRENT_LOSS, EventKind.VOLTAGE_LOSS])
def test_the_instant_values_at_once_are_the_single_getters_values(event: EventKind | None) -> None:
    m = meter(power_w=2300)
    m.advance(T0 + 90)
    if event is not None:
        m.begin_event(event, T0 + 90)
    assert m.instant_values() == (m.voltage_dv(), m.current_ma(), m.signed_power_w(), m.power_factor_milli(),
                                  m.frequency_chz())  # fmt: skip
    assert m.has_notices() == (event is not None)
    m.drain_notices()
    assert not m.has_notices()
