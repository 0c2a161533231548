"""The balance policy's writes for a whole batch of wallets (``prepaid.evaluate``), on SQLite and PostgreSQL.

``evaluate`` runs inside every ingest transaction for all wallets a batch touched, while the transaction holds
the meters' and balances' locks, so its time is time other head-ends wait. Three evaluations of the same N
wallets (each with one meter on a flat tariff, default policy, Wednesday noon: no friendly window), each in
its own transaction, timed from the call to the commit:

- **first**: no wallet has a state row yet (every wallet gets its first one); a quarter of them are at zero
  (three warnings and a trip each), a quarter at 30 yuan (one warning), half at 100 yuan;
- **unchanged**: the same balances again: nothing to write;
- **all changed**: every balance moved across a line (the ones at zero recharged to 100 yuan: a close; 30 -> 5
  yuan: two warnings and a trip; 100 -> 40 yuan: one warning): every state row is updated.

Also counted: SQL statements sent (an ``executemany`` or a COPY counts once), from SQLAlchemy's cursor events
plus the COPYs. The balances are set directly in ``ledger_accounts`` (``evaluate`` reads only the balance; no
journal is needed). Figures are the median of ``REPEATS`` runs, the state and outbox emptied between them.

    python -m bench.bench_policy_writes [--wallets 5000] [--repeats 3]
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from bench.bench_relay import database

YUAN = 1_000_000
WALLETS = 5_000
REPEATS = 3
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(dt.UTC)
TARIFF = 'id = "flat"\n[[versions]]\neffective_from = "2020-01-01"\nprice = "1.0000"\n'
PHASES = ("first", "unchanged", "all changed")


@dataclass(frozen=True)
class Timing:
    seconds: float
    statements: int
    outbox_rows: int


def first_balance(index: int) -> int:
    return (0, 30 * YUAN, 100 * YUAN, 100 * YUAN)[index % 4]


def changed_balance(index: int) -> int:
    return (100 * YUAN, 5 * YUAN, 40 * YUAN, 40 * YUAN)[index % 4]


def prepare(engine: Any, wallets: int) -> list[int]:
    """``wallets`` wallets with one meter each, written in bulk; their ids in order."""
    from powergate.domain.ledger import wallet_code
    from powergate.store import metering
    from powergate.store.bulk import Bulk

    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", TARIFF, NOW)
        bulk = Bulk(conn)
        ids = bulk.next_ids("ledger_accounts", wallets)
        codes = [wallet_code(f"A-B{index}") for index in range(wallets)]
        bulk.insert(
            "ledger_accounts",
            ("id", "code", "kind", "currency", "overdraft_limit_micros", "balance_micros", "created_at"),
            [
                (i, code, "wallet", "CNY", 0, first_balance(n), bulk.ts(NOW))
                for n, (i, code) in enumerate(zip(ids, codes, strict=True))
            ],
        )
        bulk.insert(
            "meters",
            ("id", "wallet_account_id", "tariff_id", "timezone", "register_max_wh", "max_power_w", "created_at"),
            [(f"B{n}", i, "flat", "Asia/Shanghai", 999_999_990, 100_000, bulk.ts(NOW)) for n, i in enumerate(ids)],
        )
    return ids


def set_balances(engine: Any, ids: list[int], balance_of: Any) -> None:
    from powergate.store.bulk import Bulk

    with engine.begin() as conn:
        rows = [(i, balance_of(n)) for n, i in enumerate(ids)]
        Bulk(conn).update("ledger_accounts", ("id", "bigint"), [("balance_micros", "bigint")], rows)


def reset(engine: Any, ids: list[int]) -> None:
    from sqlalchemy import delete

    from powergate.store.tables_prepaid import outbox, wallet_states

    with engine.begin() as conn:
        conn.execute(delete(outbox))
        conn.execute(delete(wallet_states))
    set_balances(engine, ids, first_balance)


class StatementCounter:
    """SQL statements sent on an engine: SQLAlchemy cursor executions plus psycopg COPYs."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)
        self._patch_copy()

    def _seen(self, *_args: Any) -> None:
        self.count += 1

    def _patch_copy(self) -> None:
        try:
            import psycopg
        except ImportError:
            return
        original = psycopg.Cursor.copy
        counter = self

        def copy(cursor: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return original(cursor, statement, *args, **kwargs)

        psycopg.Cursor.copy = copy  # type: ignore[method-assign]


def evaluate_once(engine: Any, ids: list[int], counter: StatementCounter) -> Timing:
    from powergate.services import prepaid

    started = time.perf_counter()
    with engine.begin() as conn:
        before = counter.count
        written = prepaid.evaluate(conn, ids, NOW)
        statements = counter.count - before
    elapsed = time.perf_counter() - started
    return Timing(elapsed, statements, written)


def measure(kind: str, wallets: int, repeats: int) -> dict[str, list[Timing]]:
    from powergate.store.db import make_engine

    results: dict[str, list[Timing]] = {phase: [] for phase in PHASES}
    with database(kind) as url:
        engine = make_engine(url)
        try:
            ids = prepare(engine, wallets)
            counter = StatementCounter(engine)
            for _ in range(repeats):
                reset(engine, ids)
                results["first"].append(evaluate_once(engine, ids, counter))
                results["unchanged"].append(evaluate_once(engine, ids, counter))
                set_balances(engine, ids, changed_balance)
                results["all changed"].append(evaluate_once(engine, ids, counter))
        finally:
            engine.dispose()
    return results


def report(figures: dict[str, dict[str, list[Timing]]], wallets: int, repeats: int) -> str:
    lines = [
        "## Balance policy writes for a batch of wallets (`prepaid.evaluate`)",
        "",
        f"{wallets:,} wallets evaluated in one transaction (`bench/bench_policy_writes.py`), median of {repeats} "
        "runs: the first evaluation (every wallet gets its state row), an unchanged one (nothing to write), and "
        "one where every balance crossed a line (every state row updated). Statements: SQL statements sent "
        "(an executemany or a COPY counts once; the SELECTs are included).",
        "",
        "| Database | Evaluation | Time | Statements | Outbox rows |",
        "|---|---|---|---|---|",
    ]
    for kind, results in figures.items():
        for phase in PHASES:
            runs = results[phase]
            seconds = statistics.median(t.seconds for t in runs)
            statements = statistics.median(t.statements for t in runs)
            lines.append(
                f"| {kind} | {phase} | {seconds * 1000:,.0f} ms | {statements:,.0f} | {runs[0].outbox_rows:,} |"
            )
    return "\n".join(lines)


def run(quick: bool) -> str:
    """For ``bench.run``: 5,000 wallets, 3 runs; ``quick``: 500 wallets, 1 run."""
    wallets, repeats = (500, 1) if quick else (WALLETS, REPEATS)
    figures = {kind: measure(kind, wallets, repeats) for kind in ("sqlite", "postgresql")}
    return report(figures, wallets, repeats)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.bench_policy_writes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--wallets", type=int, default=WALLETS, help=f"wallets (default {WALLETS})")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"runs per figure (default {REPEATS})")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="one database only")
    args = parser.parse_args(argv)
    if not 1 <= args.wallets <= 100_000 or not 1 <= args.repeats <= 20:
        parser.error("--wallets must be 1..100000 and --repeats 1..20")
    kinds = (args.only,) if args.only else ("sqlite", "postgresql")
    figures = {kind: measure(kind, args.wallets, args.repeats) for kind in kinds}
    print(report(figures, args.wallets, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
