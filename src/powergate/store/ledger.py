"""The ledger in the database: accounts, idempotent posting, balances and the audit.

Invariants kept here, inside the caller's transaction:
- An entry is written whole or not at all: the entry, its postings and the balance updates commit together.
- An idempotency key is UNIQUE: posting an entry whose key exists returns the stored entry and writes nothing,
  also when two transactions race (the loser's unique violation is caught in a savepoint).
- Balances are materialised in ``ledger_accounts.balance_micros`` in the same transaction as the postings, and
  ``audit`` recomputes them from the journal.
- A wallet never goes below ``-overdraft_limit_micros`` through a refund: the balance update is conditional,
  so the database enforces the limit even against a concurrent deduction.
- Balances are locked in one order everywhere: by account id, all of a statement's accounts at once. The
  shared accounts (revenue, clearing, equity) that every deduction or payment touches are hot rows, held from
  the balance update to the commit: ingest therefore updates its balances late in its transaction
  (``post_batch(defer_deltas=...)``, then ``apply_deltas`` after the readings and rating states are written),
  so concurrent head-ends queue on them only for the end of a batch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from powergate.domain.ledger import AccountKind, Entry, EntryKind, account_kind
from powergate.store.bulk import Bulk
from powergate.store.tables import ledger_accounts, ledger_entries, ledger_postings

KEY_CHUNK = 2_000
"""Bound on the number of keys in one ``IN (...)`` lookup."""


class InsufficientCredit(Exception):
    """A withdrawal (refund) would take a wallet below its overdraft limit."""

    def __init__(self, account: str, balance_micros: int, limit_micros: int, amount_micros: int) -> None:
        super().__init__(
            f"{account}: withdrawing {amount_micros} micros would leave {balance_micros - amount_micros}, "
            f"below the limit of -{limit_micros}"
        )
        self.account = account


@dataclass(frozen=True, slots=True)
class Posted:
    entry_id: int
    created: bool
    """False when the key already existed and the original entry was returned."""


@dataclass(frozen=True, slots=True)
class AccountBalance:
    code: str
    balance_micros: int
    overdraft_limit_micros: int


@dataclass(frozen=True, slots=True)
class Discrepancy:
    subject: str
    message: str


class AccountCache:
    """Account code -> id, filled lazily; accounts are never deleted, so ids never go stale."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def id_of(self, conn: Connection, code: str, now: dt.datetime, currency: str = "CNY") -> int:
        account_id = self._ids.get(code)
        if account_id is None:
            account_id = ensure_account(conn, code, now, currency=currency)
            self._ids[code] = account_id
        return account_id

    @property
    def known(self) -> Mapping[str, int]:
        """The codes resolved so far (read-only view for hot loops; misses go through ``id_of``)."""
        return self._ids

    def remember(self, code: str, account_id: int) -> None:
        self._ids[code] = account_id

    def forget(self) -> None:
        self._ids.clear()


def ensure_account(
    conn: Connection, code: str, now: dt.datetime, *, currency: str = "CNY", overdraft_limit_micros: int = 0
) -> int:
    """The id of the account ``code``, created if it does not exist."""
    kind = account_kind(code)
    existing = conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.code == code)).scalar()
    if existing is not None:
        return int(existing)
    try:
        with conn.begin_nested():
            new_id = conn.execute(
                insert(ledger_accounts).values(
                    code=code,
                    kind=kind.value,
                    currency=currency,
                    overdraft_limit_micros=overdraft_limit_micros,
                    balance_micros=0,
                    created_at=now,
                )
            ).inserted_primary_key
    except IntegrityError:
        # Another transaction created it first.
        return int(conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.code == code)).scalar_one())
    assert new_id is not None
    return int(new_id[0])


def set_overdraft_limit(conn: Connection, code: str, limit_micros: int) -> None:
    if limit_micros < 0:
        raise ValueError(f"overdraft limit must be >= 0, got {limit_micros}")
    result = conn.execute(
        update(ledger_accounts).where(ledger_accounts.c.code == code).values(overdraft_limit_micros=limit_micros)
    )
    if result.rowcount != 1:
        raise KeyError(f"no account {code!r}")


def balance(conn: Connection, code: str) -> AccountBalance:
    row = conn.execute(
        select(ledger_accounts.c.balance_micros, ledger_accounts.c.overdraft_limit_micros).where(
            ledger_accounts.c.code == code
        )
    ).first()
    if row is None:
        raise KeyError(f"no account {code!r}")
    return AccountBalance(code, int(row[0]), int(row[1]))


def find_entry_id(conn: Connection, key: str) -> int | None:
    value = conn.execute(select(ledger_entries.c.id).where(ledger_entries.c.idempotency_key == key)).scalar()
    return None if value is None else int(value)


def existing_keys(conn: Connection, keys: Sequence[str]) -> dict[str, int]:
    """Which of ``keys`` are already in the journal, with their entry ids."""
    found: dict[str, int] = {}
    for start in range(0, len(keys), KEY_CHUNK):
        chunk = keys[start : start + KEY_CHUNK]
        rows = conn.execute(
            select(ledger_entries.c.idempotency_key, ledger_entries.c.id).where(
                ledger_entries.c.idempotency_key.in_(chunk)
            )
        )
        found.update((str(k), int(i)) for k, i in rows)
    return found


def post(conn: Connection, entry: Entry, now: dt.datetime, accounts: AccountCache | None = None) -> Posted:
    """Write ``entry`` once. A replay of its key returns the original entry and writes nothing."""
    existing = find_entry_id(conn, entry.idempotency_key)
    if existing is not None:
        return Posted(existing, created=False)
    cache = accounts or AccountCache()
    account_ids = [cache.id_of(conn, p.account, now) for p in entry.postings]
    try:
        with conn.begin_nested():
            entry_id = _insert_entry(conn, entry, now)
            conn.execute(
                insert(ledger_postings),
                [
                    {"entry_id": entry_id, "account_id": a, "amount_micros": p.amount_micros}
                    for a, p in zip(account_ids, entry.postings, strict=True)
                ],
            )
            in_lock_order = sorted(zip(account_ids, entry.postings, strict=True), key=lambda pair: pair[0])
            for account_id, posting in in_lock_order:
                _apply_to_balance(conn, account_id, posting.account, posting.amount_micros, entry.kind)
    except IntegrityError:
        existing = find_entry_id(conn, entry.idempotency_key)
        if existing is None:
            raise
        return Posted(existing, created=False)
    return Posted(entry_id, created=True)


def _insert_entry(conn: Connection, entry: Entry, now: dt.datetime) -> int:
    result = conn.execute(
        insert(ledger_entries).values(
            idempotency_key=entry.idempotency_key,
            kind=entry.kind.value,
            event_at=entry.event_at,
            recorded_at=now,
            description=entry.description,
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def _apply_to_balance(conn: Connection, account_id: int, code: str, delta: int, kind: EntryKind) -> None:
    accounts = ledger_accounts.c
    statement = update(ledger_accounts).where(accounts.id == account_id)
    guarded = kind is EntryKind.REFUND and delta < 0 and account_kind(code) is AccountKind.WALLET
    if guarded:
        statement = statement.where(accounts.balance_micros + delta >= -accounts.overdraft_limit_micros)
    result = conn.execute(statement.values(balance_micros=accounts.balance_micros + delta))
    if result.rowcount != 1:
        assert guarded, f"account {code} vanished"
        current = balance(conn, code)
        raise InsufficientCredit(code, current.balance_micros, current.overdraft_limit_micros, -delta)


def post_batch(
    conn: Connection,
    entries: Sequence[Entry],
    now: dt.datetime,
    accounts: AccountCache,
    bulk: Bulk | None = None,
    *,
    defer_deltas: dict[int, int] | None = None,
) -> list[int]:
    """Write many new entries at once (the ingest path); returns their ids, in the order given.

    The caller has already filtered out keys that exist; a race with another writer surfaces as an
    ``IntegrityError`` that rolls back the caller's whole batch, which is then retried. Refunds, whose limit
    must be checked per entry, go through ``post``. ``bulk``: the caller's, to share its timestamp cache.

    Balances are updated here, unless the caller passes ``defer_deltas``: the net change per account id is then
    added to it, and the caller must ``apply_deltas`` it later in the same transaction (the hot shared accounts
    are then held for a shorter time; see the module's lock order).
    """
    if not entries:
        return []
    bulk = bulk or Bulk(conn)
    entry_ids = bulk.next_ids("ledger_entries", len(entries))
    ts = bulk.ts
    recorded = ts(now)
    known = accounts.known
    refund = EntryKind.REFUND
    entry_rows = []
    posting_rows = []
    deltas: dict[int, int] = {}
    for entry_id, entry in zip(entry_ids, entries, strict=True):
        kind = entry.kind
        assert kind is not refund, "refunds are posted one by one"
        entry_rows.append(
            (entry_id, entry.idempotency_key, kind.value, ts(entry.event_at), recorded, entry.description)
        )
        for posting in entry.postings:
            code = posting.account
            account_id = known.get(code) or accounts.id_of(conn, code, now)
            amount = posting.amount_micros
            posting_rows.append((entry_id, account_id, amount))
            deltas[account_id] = deltas.get(account_id, 0) + amount
    bulk.insert(
        "ledger_entries",
        ("id", "idempotency_key", "kind", "event_at", "recorded_at", "description"),
        entry_rows,
    )
    bulk.insert("ledger_postings", ("entry_id", "account_id", "amount_micros"), posting_rows)
    if defer_deltas is None:
        apply_deltas(conn, deltas, bulk)
    else:
        for account_id, delta in deltas.items():
            defer_deltas[account_id] = defer_deltas.get(account_id, 0) + delta
    return entry_ids


def apply_deltas(conn: Connection, deltas: dict[int, int], bulk: Bulk | None = None) -> None:
    """Add the net change per account id to the materialised balances (one statement, many rows).

    Concurrent writers lock the accounts in id order, so they never deadlock: on PostgreSQL an ``UPDATE ... FROM
    unnest(...)`` locks rows in whatever order its plan visits them, so the rows are locked first with an ordered
    ``SELECT ... FOR NO KEY UPDATE`` (the lock the UPDATE itself takes; ``FOR UPDATE`` would also conflict with
    the key-share locks that inserting postings and notifications take on their accounts, and deadlock with
    them); SQLite's single writer needs no lock.
    """
    rows = [(a, d) for a, d in sorted(deltas.items()) if d != 0]
    bulk = bulk or Bulk(conn)
    if rows and not bulk.sqlite:
        lock_balances(conn, [account_id for account_id, _ in rows])
    bulk.update("ledger_accounts", ("id", "bigint"), [("balance_micros", "bigint")], rows, add=True)


def lock_balances(conn: Connection, account_ids: Sequence[int]) -> None:
    """PostgreSQL: lock these accounts' balances until the transaction ends, in id order, with the lock their
    update takes (``FOR NO KEY UPDATE``). A writer that decides from a balance without changing it (the deferred
    trips falling due) takes it too, so an ingest of the same wallet cannot commit between its read and its
    write. SQLite's one writer needs none."""
    if account_ids and conn.dialect.name == "postgresql":
        query = "SELECT id FROM ledger_accounts WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
        conn.exec_driver_sql(query, (sorted(account_ids),))


def audit(conn: Connection) -> list[Discrepancy]:
    """Recompute the ledger from the journal; every difference is a discrepancy (empty list: exact)."""
    problems: list[Discrepancy] = []
    postings = ledger_postings.c
    unbalanced = conn.execute(
        select(postings.entry_id, func.sum(postings.amount_micros), func.count())
        .group_by(postings.entry_id)
        .having((func.sum(postings.amount_micros) != 0) | (func.count() < 2))
    )
    for entry_id, total, count in unbalanced:
        problems.append(
            Discrepancy(f"entry {entry_id}", f"{count} postings summing to {total} micros (must be >= 2 and 0)")
        )
    orphans = conn.execute(
        select(ledger_entries.c.id, ledger_entries.c.idempotency_key)
        .outerjoin(ledger_postings, ledger_postings.c.entry_id == ledger_entries.c.id)
        .where(ledger_postings.c.id.is_(None))
    )
    for entry_id, key in orphans:
        problems.append(Discrepancy(f"entry {entry_id} ({key})", "has no postings"))
    sums = (
        select(postings.account_id, func.sum(postings.amount_micros).label("total"))
        .group_by(postings.account_id)
        .subquery()
    )
    mismatched = conn.execute(
        select(ledger_accounts.c.code, ledger_accounts.c.balance_micros, func.coalesce(sums.c.total, 0))
        .outerjoin(sums, sums.c.account_id == ledger_accounts.c.id)
        .where(ledger_accounts.c.balance_micros != func.coalesce(sums.c.total, 0))
    )
    for code, stored, computed in mismatched:
        problems.append(Discrepancy(f"account {code}", f"balance {stored} micros but its postings sum to {computed}"))
    grand_total = conn.execute(select(func.coalesce(func.sum(ledger_accounts.c.balance_micros), 0))).scalar_one()
    if int(grand_total) != 0:
        problems.append(Discrepancy("ledger", f"account balances sum to {grand_total} micros, not zero"))
    return problems


def entries_of(conn: Connection, keys: Iterable[str]) -> list[tuple[str, str, int]]:
    """(key, account code, amount) for the postings of the given entries, for tests and the console."""
    rows = conn.execute(
        select(ledger_entries.c.idempotency_key, ledger_accounts.c.code, ledger_postings.c.amount_micros)
        .join(ledger_postings, ledger_postings.c.entry_id == ledger_entries.c.id)
        .join(ledger_accounts, ledger_accounts.c.id == ledger_postings.c.account_id)
        .where(ledger_entries.c.idempotency_key.in_(list(keys)))
        .order_by(ledger_entries.c.id, ledger_postings.c.id)
    )
    return [(str(k), str(c), int(a)) for k, c, a in rows]
