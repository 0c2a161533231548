"""The run-out forecast of a wallet: its balance and the daily costs of its meters' last daily freezes.

Reads the materialised balance and the wallet's summed ``daily_freezes.cost_micros`` of the last
``DAYS_OF_HISTORY`` frozen days (oldest first) and applies ``powergate.domain.forecast``.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from powergate.domain.forecast import Forecast, forecast

DAYS_OF_HISTORY = 7


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
    return forecast(int(balance), [int(cost) for _, cost in reversed(rows)])
