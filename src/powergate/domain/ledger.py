"""The prepaid ledger's rules: double-entry, append-only, integer micros.

An ``Entry`` is one business event (a recharge, a deduction for a reading, a refund, a standing charge, a
reversal). Its ``Posting``s move micros between accounts and always sum to zero. Entries are never changed or
deleted: a correction is a new entry (``reversal_of``). Every entry carries an idempotency key (the payment
notification id, the reading id, the command id) that the store keeps UNIQUE, so a replay returns the original
entry and never makes a second one. Each entry records when it happened (``event_at``) and the store records
when it was written (``recorded_at``).

Sign convention: an account's balance is the sum of its postings. A tenant's wallet is positive while it holds
credit; a recharge moves micros from the payment channel's clearing account (which goes negative: money the
platform received) to the wallet; a deduction moves them from the wallet to a revenue account per charge
component.

A wallet's balance limit is a property of the account: ``-overdraft_limit_micros``. Consumption is always
posted (the energy was used); crossing the limit is what makes the balance policy decide to trip the relay.
Money going *out* of a wallet by choice (a refund, a transfer) may never take it below the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache

MAX_KEY_LENGTH = 200
MAX_POSTINGS_PER_ENTRY = 64


class AccountKind(StrEnum):
    """What an account is for; the code's prefix names it (``wallet:A-1001``, ``revenue:energy``)."""

    WALLET = "wallet"
    REVENUE = "revenue"
    CLEARING = "clearing"
    EQUITY = "equity"


class EntryKind(StrEnum):
    RECHARGE = "recharge"
    DEDUCTION = "deduction"
    REFUND = "refund"
    STANDING_CHARGE = "standing_charge"
    ADJUSTMENT = "adjustment"
    REVERSAL = "reversal"


def wallet_code(account_no: str) -> str:
    return f"{AccountKind.WALLET.value}:{account_no}"


def revenue_code(component: str) -> str:
    return f"{AccountKind.REVENUE.value}:{component}"


def clearing_code(channel: str) -> str:
    return f"{AccountKind.CLEARING.value}:{channel}"


_KINDS_BY_PREFIX = {kind.value: kind for kind in AccountKind}


def account_kind(code: str) -> AccountKind:
    """The kind named by an account code's prefix; ``ValueError`` if the prefix is unknown."""
    prefix, _, rest = code.partition(":")
    if not rest:
        raise ValueError(f"account code {code!r} must look like 'kind:name'")
    kind = _KINDS_BY_PREFIX.get(prefix)
    if kind is None:
        known = ", ".join(_KINDS_BY_PREFIX)
        raise ValueError(f"account code {code!r}: unknown kind {prefix!r}; expected one of {known}")
    return kind


_checked_kind = lru_cache(maxsize=4096)(account_kind)
"""``account_kind`` remembered per valid code (a rejected code raises every time): the ingest path checks the
same few wallet and revenue codes thousands of times a second."""


@dataclass(frozen=True, slots=True)
class Posting:
    account: str
    amount_micros: int


@dataclass(frozen=True, slots=True)
class Entry:
    """A balanced, immutable journal entry. Construct it with ``make_entry`` to have it checked."""

    idempotency_key: str
    kind: EntryKind
    event_at: datetime
    postings: tuple[Posting, ...]
    description: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)


class LedgerError(ValueError):
    """An entry that breaks a ledger rule; the message says which and why."""


def make_entry(
    idempotency_key: str,
    kind: EntryKind,
    event_at: datetime,
    postings: Iterable[Posting],
    description: str = "",
    meta: Mapping[str, str] | None = None,
) -> Entry:
    """A checked entry: key present and bounded, aware time, 2..64 non-zero postings that sum to zero."""
    items = tuple(postings)
    if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH:
        raise LedgerError(f"idempotency key must be 1..{MAX_KEY_LENGTH} characters, got {idempotency_key!r}")
    if event_at.tzinfo is None or event_at.utcoffset() is None:
        raise LedgerError(f"entry {idempotency_key}: event time {event_at.isoformat()} has no time zone")
    if not 2 <= len(items) <= MAX_POSTINGS_PER_ENTRY:
        raise LedgerError(f"entry {idempotency_key}: needs 2..{MAX_POSTINGS_PER_ENTRY} postings, has {len(items)}")
    for posting in items:
        _checked_kind(posting.account)
        if posting.amount_micros == 0:
            raise LedgerError(f"entry {idempotency_key}: zero posting to {posting.account}")
    total = sum(p.amount_micros for p in items)
    if total != 0:
        raise LedgerError(f"entry {idempotency_key}: postings sum to {total} micros, not zero")
    return Entry(idempotency_key, kind, event_at, items, description, dict(meta or {}))


def recharge_entry(
    key: str, wallet: str, channel: str, amount_micros: int, event_at: datetime, description: str = ""
) -> Entry:
    """Money received through ``channel`` becomes credit in ``wallet``."""
    if amount_micros <= 0:
        raise LedgerError(f"recharge {key}: amount must be positive, got {amount_micros} micros")
    return make_entry(
        key,
        EntryKind.RECHARGE,
        event_at,
        (Posting(clearing_code(channel), -amount_micros), Posting(wallet, amount_micros)),
        description,
    )


def refund_entry(
    key: str, wallet: str, channel: str, amount_micros: int, event_at: datetime, description: str = ""
) -> Entry:
    """Credit leaves ``wallet`` back through ``channel``. The store checks it never exceeds the balance."""
    if amount_micros <= 0:
        raise LedgerError(f"refund {key}: amount must be positive, got {amount_micros} micros")
    return make_entry(
        key,
        EntryKind.REFUND,
        event_at,
        (Posting(wallet, -amount_micros), Posting(clearing_code(channel), amount_micros)),
        description,
    )


def charge_entry(
    key: str,
    wallet: str,
    amounts_by_component: Mapping[str, int],
    event_at: datetime,
    kind: EntryKind = EntryKind.DEDUCTION,
    description: str = "",
) -> Entry | None:
    """Deduct charges from ``wallet`` into one revenue account per component; ``None`` when all are zero.

    The checks are ``make_entry``'s, done directly: this runs once per rated reading, and an entry built
    here is balanced by construction (the wallet gives exactly what the revenue accounts receive).
    """
    postings = [Posting(_REVENUE_PREFIX + c, a) for c, a in sorted(amounts_by_component.items()) if a != 0]
    total = 0
    for posting in postings:
        if posting.amount_micros < 0:
            raise LedgerError(f"charge {key}: negative component in {dict(amounts_by_component)}")
        total += posting.amount_micros
    if total == 0:
        return None
    if not key or len(key) > MAX_KEY_LENGTH:
        raise LedgerError(f"idempotency key must be 1..{MAX_KEY_LENGTH} characters, got {key!r}")
    if event_at.tzinfo is None or event_at.utcoffset() is None:
        raise LedgerError(f"entry {key}: event time {event_at.isoformat()} has no time zone")
    if len(postings) >= MAX_POSTINGS_PER_ENTRY:
        raise LedgerError(f"entry {key}: needs 2..{MAX_POSTINGS_PER_ENTRY} postings, has {len(postings) + 1}")
    _checked_kind(wallet)
    for posting in postings:
        _checked_kind(posting.account)
    return _balanced_entry(key, kind, event_at, (Posting(wallet, -total), *postings), description)


_REVENUE_PREFIX = f"{AccountKind.REVENUE.value}:"
_NEW = object.__new__
_ENTRY_FIELDS = ("idempotency_key", "kind", "event_at", "postings", "description", "meta")
assert tuple(Entry.__dict__["__slots__"]) == _ENTRY_FIELDS, "Entry fields changed; update _balanced_entry"
_ENTRY_SETTERS: tuple[Callable[[object, object], None], ...] = tuple(
    getattr(Entry, name).__set__ for name in _ENTRY_FIELDS
)


def _balanced_entry(
    key: str, kind: EntryKind, event_at: datetime, postings: tuple[Posting, ...], description: str
) -> Entry:
    """An ``Entry`` equal to calling the class, at half the cost: a frozen dataclass sets each field through
    ``object.__setattr__``; this calls the slot descriptors directly. For checked, balanced postings only."""
    assert not sum([p.amount_micros for p in postings]), f"entry {key} is not balanced"
    entry = _NEW(Entry)
    s0, s1, s2, s3, s4, s5 = _ENTRY_SETTERS
    s0(entry, key)
    s1(entry, kind)
    s2(entry, event_at)
    s3(entry, postings)
    s4(entry, description)
    s5(entry, {})
    return entry


def reversal_of(original: Entry, key: str, event_at: datetime, reason: str) -> Entry:
    """The correction of ``original``: the same postings with the opposite sign, as a new entry."""
    return make_entry(
        key,
        EntryKind.REVERSAL,
        event_at,
        (Posting(p.account, -p.amount_micros) for p in original.postings),
        f"reversal of {original.idempotency_key}: {reason}",
        {"reverses": original.idempotency_key},
    )


def balance_deltas(entries: Iterable[Entry]) -> dict[str, int]:
    """Net change per account over ``entries``."""
    deltas: dict[str, int] = {}
    for entry in entries:
        for posting in entry.postings:
            deltas[posting.account] = deltas.get(posting.account, 0) + posting.amount_micros
    return deltas


def within_limit(balance_micros: int, overdraft_limit_micros: int, withdrawal_micros: int) -> bool:
    """May ``withdrawal_micros`` leave a wallet by choice (refund, transfer) without passing its limit?"""
    assert overdraft_limit_micros >= 0
    return balance_micros - withdrawal_micros >= -overdraft_limit_micros
