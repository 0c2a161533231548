"""The run-out forecast of a wallet: its balance and the daily costs of its meters' last daily freezes.

Reads the materialised balance and the wallet's summed ``daily_freezes.cost_micros`` of the last
``DAYS_OF_HISTORY`` frozen days (oldest first) and applies ``powergate.domain.forecast``.

A new account has no frozen day yet. Its rate is then an early estimate from its readings so far: for each
meter of the wallet, the energy between its first and its latest stored reading (per TOU band when both
readings carry band registers), priced at its tariff's prices in effect at the latest reading, over the time
between them (at least ``MIN_EARLY_SPAN``), summed over the meters. The result says ``early_estimate``, and
its text says so. Integers throughout; a register that went backwards (a replaced meter) contributes nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select, text

from powergate.domain.forecast import SECONDS_PER_DAY, Forecast, forecast
from powergate.domain.tariff_files import load_tariff
from powergate.services.freeze import band_prices
from powergate.store.tables import meters, readings, tariffs

DAYS_OF_HISTORY = 7
MIN_EARLY_SPAN = dt.timedelta(hours=1)
"""Readings closer together than this say too little about a day's spending to forecast from."""
MAX_METERS = 100
"""Bound on the meters of one wallet looked at for an early estimate."""
_BAND_COLUMNS = (readings.c.sharp_wh, readings.c.peak_wh, readings.c.flat_wh, readings.c.valley_wh)
_FLAT_BAND = 2
"""Index of the flat band in ``band_prices``: the price of energy a meter does not split by band."""


def wallet_forecast(conn: Connection, wallet_account_id: int) -> Forecast:
    """Time left for a wallet; ``KeyError`` if there is no such ledger account."""
    balance = conn.execute(
        text("SELECT balance_micros FROM ledger_accounts WHERE id = :id"), {"id": wallet_account_id}
    ).scalar()
    if balance is None:
        raise KeyError(f"wallet_account_id: no ledger account {wallet_account_id}")
    rows = conn.execute(
        text(
            "SELECT day, SUM(cost_micros) FROM daily_freezes WHERE wallet_account_id = :id"
            " GROUP BY day ORDER BY day DESC LIMIT :days"
        ),
        {"id": wallet_account_id, "days": DAYS_OF_HISTORY},
    ).all()
    if rows:
        return forecast(int(balance), [int(cost) for _, cost in reversed(rows)])
    early = early_rate_micros_per_day(conn, wallet_account_id)
    if early is None:
        return forecast(int(balance), [])
    return replace(forecast(int(balance), [early]), early_estimate=True)


def early_rate_micros_per_day(conn: Connection, wallet_account_id: int) -> int | None:
    """The wallet's spending a day from its meters' readings so far (rounded up); ``None`` if no meter has two
    readings ``MIN_EARLY_SPAN`` apart."""
    query = (
        select(meters.c.id, meters.c.timezone, tariffs.c.document)
        .join(tariffs, tariffs.c.id == meters.c.tariff_id)
        .where(meters.c.wallet_account_id == wallet_account_id)
        .order_by(meters.c.id)
        .limit(MAX_METERS)
    )
    found = False
    total_nanos_per_day = 0
    for meter_id, timezone, document in conn.execute(query).all():
        cost = _meter_cost(conn, str(meter_id), str(timezone), str(document))
        if cost is None:
            continue
        found = True
        cost_nanos, span_s = cost
        total_nanos_per_day += cost_nanos * SECONDS_PER_DAY // span_s
    if not found:
        return None
    return -(-total_nanos_per_day // 1_000)


def _meter_cost(conn: Connection, meter_id: str, timezone: str, document: str) -> tuple[int, int] | None:
    """(cost in nano-units of the energy between the meter's first and latest reading, seconds between them)."""
    columns = (readings.c.at, readings.c.total_wh, *_BAND_COLUMNS)
    base = select(*columns).where(readings.c.meter_id == meter_id, readings.c.status != "quarantined").limit(1)
    first = conn.execute(base.order_by(readings.c.at)).first()
    last = conn.execute(base.order_by(readings.c.at.desc())).first()
    if first is None or last is None:
        return None
    span_s = int((last.at - first.at).total_seconds())
    if span_s < MIN_EARLY_SPAN.total_seconds() or last.total_wh < first.total_wh:
        return None
    prices = band_prices(load_tariff(document, source=f"meter {meter_id}"), last.at.astimezone(ZoneInfo(timezone)))
    first_bands, last_bands = tuple(first[2:]), tuple(last[2:])
    if None not in first_bands and None not in last_bands:
        deltas = [max(int(b) - int(a), 0) for a, b in zip(first_bands, last_bands, strict=True)]
        # energy the bands do not account for (registers rounded separately) is priced flat
        deltas[_FLAT_BAND] += max(int(last.total_wh) - int(first.total_wh) - sum(deltas), 0)
    else:
        deltas = [0, 0, int(last.total_wh) - int(first.total_wh), 0]
    # Wh x micros per kWh = nano-units: exact
    return sum(wh * price for wh, price in zip(deltas, prices, strict=True)), span_s
