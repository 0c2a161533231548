"""Notifications: from an event to stored messages, and from stored messages to channel adapters.

Two halves meet in the ``notifications`` table:

1. ``notify_event(conn, event, now)`` runs in the caller's transaction (the outbox relay's): it resolves the
   recipients (the account's tenant and the site's administrators), their channel preferences and languages,
   renders the templates and inserts one queued message per (event, recipient, channel). Non-urgent messages that
   fall in the recipient's quiet hours are queued with ``next_attempt_at`` at the end of the window. Notifying the
   same event key again inserts nothing: UNIQUE(event_key, recipient_id, channel) says so in the database too.
2. ``DeliveryWorker`` claims due messages with a conditional UPDATE (a lease: ``claimed_by`` + ``claimed_until``),
   commits the claim, sends through the channel adapter, and records the result only if it still holds the
   claim. A worker that dies between claim and result leaves a claim that expires; another worker takes the
   message over.

The guarantee: **at-least-once delivery to the provider, exactly-once per message id at providers that honour
it.** A message is never lost (it stays queued until a result is recorded, and every claim expires), and it is
handed to the provider again only when a worker died (or its lease ran out) after the provider may have
received it. Each attempt carries the same message id (``ntf-<id>-<resends>``), which adapters pass to the
provider as its idempotency key (the webhook id header, the SMS out id, the e-mail Message-ID), so a provider
that de-duplicates shows it once. A resend is deliberately a new message id.

Retryable failures are retried with exponential backoff and jitter up to ``MAX_ATTEMPTS`` attempts; a permanent
failure (or the last attempt) marks the message failed. Every limit is explicit: batch size, lease, send timeout,
attempts, log rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, insert, or_, select, update

from powergate.domain.money import currency as currency_of
from powergate.domain.money import format_money
from powergate.domain.notifications import (
    CHANNELS,
    LANGUAGES,
    MAX_ATTEMPTS,
    SAMPLE_DATA,
    URGENT_EVENTS,
    Channel,
    DeliveryResult,
    EventKind,
    NotificationEvent,
    OutgoingMessage,
    QuietHours,
    Rendered,
    TemplateProblem,
    check_event,
    default_template,
    missing_variables,
    next_allowed_at,
    render,
    retry_delay_s,
    template_variables,
)
from powergate.store.audit import record_audit
from powergate.store.tables_notify import (
    notification_preferences,
    notification_recipients,
    notification_templates,
    notifications,
)
from powergate.store.tables_structure import accounts, meter_assignments, rooms, sites

MAX_LOG_ROWS = 1_000
MAX_BATCH = 500
MAX_RESENDS = 100
SYSTEM_ACTOR = "system:notify"

ADDRESS_COLUMNS: Mapping[str, str] = {
    "email": "email",
    "sms": "phone",
    "voice": "phone",
    "wechat": "wechat_openid",
    "push": "push_token",
    "webhook": "webhook_url",
}
"""Which recipient column holds the address for each channel."""

TENANT_DEFAULT_EVENTS = frozenset(
    {
        EventKind.LOW_BALANCE,
        EventKind.TRIPPED,
        EventKind.RESTORED,
        EventKind.RECHARGE_RECEIVED,
        EventKind.REFUND,
        EventKind.RUNOUT_FORECAST,
        EventKind.BILL_ISSUED,
        EventKind.BILL_OVERDUE,
    }
)
ADMIN_DEFAULT_EVENTS = frozenset(
    {
        EventKind.METER_ALARM,
        EventKind.METER_OFFLINE,
        EventKind.RECONCILIATION_DISCREPANCY,
        EventKind.DAILY_REPORT_READY,
    }
)
"""Without a preference row a tenant hears about their own money and supply, an administrator about the site."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """An operating error: the field at fault and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# --- recipients and preferences ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Addresses:
    email: str | None = None
    phone: str | None = None
    wechat_openid: str | None = None
    push_token: str | None = None
    webhook_url: str | None = None


def add_recipient(
    conn: Connection,
    site_id: int,
    name: str,
    *,
    account_id: int | None = None,
    admin_login: str | None = None,
    language: str = "zh-CN",
    addresses: Addresses = Addresses(),
    quiet: QuietHours | None = None,
) -> int | Rejected:
    """A tenant (``account_id``) or a site administrator (``admin_login``) who receives notifications."""
    if (account_id is None) == (admin_login is None):
        return Rejected("recipient", "give exactly one of account_id (tenant) or admin_login (administrator)")
    if language not in LANGUAGES:
        return Rejected("language", f"{language!r} is not one of {', '.join(LANGUAGES)}")
    if not name.strip() or len(name) > 120:
        return Rejected("name", "name must be 1..120 characters")
    if conn.execute(select(sites.c.id).where(sites.c.id == site_id)).first() is None:
        return Rejected("site", f"no site {site_id}")
    result = conn.execute(
        insert(notification_recipients).values(
            site_id=site_id,
            role="tenant" if account_id is not None else "admin",
            account_id=account_id,
            admin_login=admin_login,
            name=name,
            language=language,
            email=addresses.email,
            phone=addresses.phone,
            wechat_openid=addresses.wechat_openid,
            push_token=addresses.push_token,
            webhook_url=addresses.webhook_url,
            quiet_start_min=None if quiet is None else _minutes(quiet.start),
            quiet_end_min=None if quiet is None else _minutes(quiet.end),
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def set_preference(conn: Connection, recipient_id: int, event: EventKind, channels: Iterable[str]) -> Rejected | None:
    """Which channels a recipient wants for one event kind (an empty list: none). Replaces the previous choice."""
    wanted = set(channels)
    unknown = sorted(wanted - set(CHANNELS))
    if unknown:
        return Rejected("channels", f"unknown channel {unknown[0]!r}; known: {', '.join(CHANNELS)}")
    chosen = sorted(wanted, key=CHANNELS.index)
    exists = select(notification_recipients.c.id).where(notification_recipients.c.id == recipient_id)
    if conn.execute(exists).first() is None:
        return Rejected("recipient", f"no recipient {recipient_id}")
    key = and_(notification_preferences.c.recipient_id == recipient_id, notification_preferences.c.event == event)
    conn.execute(notification_preferences.delete().where(key))
    conn.execute(
        insert(notification_preferences).values(recipient_id=recipient_id, event=event.value, channels=",".join(chosen))
    )
    return None


def _minutes(value: dt.time) -> int:
    return value.hour * 60 + value.minute


def _quiet(row: Any) -> QuietHours | None:
    if row.quiet_start_min is None:
        return None
    start, end = int(row.quiet_start_min), int(row.quiet_end_min)
    return QuietHours(dt.time(start // 60, start % 60), dt.time(end // 60, end % 60))


def _tenant_recipient(conn: Connection, account_id: int) -> Any | None:
    """The account's tenant recipient, created from the account's phone and e-mail the first time."""
    query = select(notification_recipients).where(notification_recipients.c.account_id == account_id)
    row = conn.execute(query).first()
    if row is not None:
        return row
    account = conn.execute(select(accounts).where(accounts.c.id == account_id)).first()
    if account is None:
        return None
    added = add_recipient(
        conn,
        int(account.site_id),
        account.name,
        account_id=account_id,
        addresses=Addresses(email=account.email, phone=account.phone),
    )
    assert not isinstance(added, Rejected), str(added)
    return conn.execute(query).first()


def _recipients(conn: Connection, event: NotificationEvent) -> list[Any]:
    """The account's tenant (if any) and every active administrator of the event's site."""
    found: list[Any] = []
    if event.account_id is not None:
        tenant = _tenant_recipient(conn, event.account_id)
        # A tenant hears about their account only through the account's own site (a mismatch is a caller bug).
        assert tenant is None or tenant.site_id == event.site_id, "the event's site is not the account's site"
        if tenant is not None and tenant.active:
            found.append(tenant)
    admins = select(notification_recipients).where(
        notification_recipients.c.site_id == event.site_id,
        notification_recipients.c.role == "admin",
        notification_recipients.c.active.is_(True),
    )
    found.extend(conn.execute(admins.order_by(notification_recipients.c.id)))
    return found


def _channels_for(conn: Connection, recipient: Any, kind: EventKind) -> list[str]:
    """The recipient's chosen channels for ``kind`` that have an address; defaults when nothing was chosen."""
    query = select(notification_preferences.c.channels).where(
        notification_preferences.c.recipient_id == recipient.id, notification_preferences.c.event == kind.value
    )
    chosen = conn.execute(query).scalar_one_or_none()
    if chosen is not None:
        wanted = [c for c in str(chosen).split(",") if c]
    else:
        defaults = TENANT_DEFAULT_EVENTS if recipient.role == "tenant" else ADMIN_DEFAULT_EVENTS
        # By default a voice call is only for a cut or restored supply: calling about a recharge is a nuisance.
        wanted = [c for c in CHANNELS if c != "voice" or kind in URGENT_EVENTS] if kind in defaults else []
    return [c for c in wanted if getattr(recipient, ADDRESS_COLUMNS[c])]


# --- templates ---------------------------------------------------------------------------------------------


def _template(conn: Connection, kind: EventKind, language: str, channel: str) -> tuple[str, str]:
    row = conn.execute(
        select(notification_templates.c.subject, notification_templates.c.body).where(
            notification_templates.c.event == kind.value,
            notification_templates.c.language == language,
            notification_templates.c.channel == channel,
        )
    ).first()
    return (row.subject, row.body) if row is not None else default_template(kind, language)


@dataclass(frozen=True, slots=True)
class Preview:
    """A template rendered with sample data, and every variable it uses that the sample lacks."""

    subject: str
    body: str
    missing: tuple[str, ...]
    problem: TemplateProblem | None


def preview_template(kind: EventKind, subject: str, body: str, data: Mapping[str, str] | None = None) -> Preview:
    """Render a draft with ``data`` (default: ``SAMPLE_DATA``); missing variables are listed, not guessed."""
    sample = dict(SAMPLE_DATA if data is None else data)
    missing = missing_variables(subject, body, sample)
    for name in missing:  # show where the hole is rather than failing the whole preview
        sample[name] = f"<{name}?>"
    rendered = render(subject, body, sample)
    if isinstance(rendered, TemplateProblem):
        return Preview("", "", missing, rendered)
    problem = None
    if missing:
        field_name = "subject" if missing[0] in missing_variables(subject, "", {}) else "body"
        problem = TemplateProblem(field_name, f"unknown variable ${{{missing[0]}}}", missing[0])
    return Preview(rendered.subject, rendered.body, missing, problem)


def set_template(
    conn: Connection,
    kind: EventKind,
    language: str,
    channel: str,
    subject: str,
    body: str,
    *,
    actor: str,
    now: dt.datetime,
) -> Rejected | None:
    """Replace the template for (event, language, channel), audited. Unknown variables are refused."""
    if language not in LANGUAGES:
        return Rejected("language", f"{language!r} is not one of {', '.join(LANGUAGES)}")
    if channel not in CHANNELS:
        return Rejected("channel", f"{channel!r} is not one of {', '.join(CHANNELS)}")
    for field_name, text in (("subject", subject), ("body", body)):
        names = template_variables(text)
        if isinstance(names, TemplateProblem):
            return Rejected(field_name, names.message)
        unknown = [n for n in names if n not in SAMPLE_DATA]
        if unknown:
            return Rejected(field_name, f"unknown variable ${{{unknown[0]}}}")
    if not body.strip():
        return Rejected("body", "body must not be empty")
    key = (
        (notification_templates.c.event == kind.value)
        & (notification_templates.c.language == language)
        & (notification_templates.c.channel == channel)
    )
    conn.execute(notification_templates.delete().where(key))
    conn.execute(
        insert(notification_templates).values(
            event=kind.value,
            language=language,
            channel=channel,
            subject=subject,
            body=body,
            updated_by=actor,
            updated_at=now,
        )
    )
    detail = {"subject": subject[:500], "body": body[:2000]}
    subject_name = f"template:{kind.value}/{language}/{channel}"
    record_audit(conn, actor, "set_notification_template", subject_name, "template edited", detail, now)
    return None


# --- from an event to messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notified:
    """What ``notify_event`` did: messages inserted, already present (a repeat), and deferred by quiet hours."""

    inserted: int
    existing: int
    deferred: int


@dataclass(frozen=True, slots=True)
class _Draft:
    recipient_id: int
    channel: str
    address: str
    language: str
    rendered: Rendered
    due_at: dt.datetime


def notify_event(conn: Connection, event: NotificationEvent, now: dt.datetime) -> Notified | Rejected:
    """Queue one message per recipient and channel for ``event``, in the caller's transaction; idempotent.

    Everything is rendered before anything is inserted: an event whose data lacks a template variable inserts
    nothing and returns the variable's name, so the caller can keep its outbox row and report it.
    """
    problem = check_event(event)
    if problem is not None:
        return Rejected(problem.field, problem.message)
    timezone = conn.execute(select(sites.c.timezone).where(sites.c.id == event.site_id)).scalar_one_or_none()
    if timezone is None:
        return Rejected("site_id", f"no site {event.site_id}")
    drafts = _drafts(conn, event, ZoneInfo(str(timezone)), now)
    if isinstance(drafts, Rejected):
        return drafts
    present = {
        (int(r.recipient_id), str(r.channel))
        for r in conn.execute(
            select(notifications.c.recipient_id, notifications.c.channel).where(notifications.c.event_key == event.key)
        )
    }
    fresh = [d for d in drafts if (d.recipient_id, d.channel) not in present]
    data = json.dumps(dict(event.data), sort_keys=True, ensure_ascii=False)
    for draft in fresh:
        conn.execute(
            insert(notifications).values(
                event_key=event.key,
                event=event.kind.value,
                recipient_id=draft.recipient_id,
                channel=draft.channel,
                address=draft.address,
                language=draft.language,
                subject=draft.rendered.subject,
                body=draft.rendered.body,
                data=data,
                next_attempt_at=draft.due_at,
                created_at=now,
            )
        )
    deferred = sum(1 for d in fresh if d.due_at > now)
    return Notified(len(fresh), len(drafts) - len(fresh), deferred)


def _drafts(
    conn: Connection, event: NotificationEvent, timezone: ZoneInfo, now: dt.datetime
) -> list[_Draft] | Rejected:
    drafts: list[_Draft] = []
    for recipient in _recipients(conn, event):
        due_at = next_allowed_at(now, timezone, _quiet(recipient), event.kind)
        for channel in _channels_for(conn, recipient, event.kind):
            subject, body = _template(conn, event.kind, recipient.language, channel)
            rendered = render(subject, body, event.data)
            if isinstance(rendered, TemplateProblem):
                where = f"{event.kind.value}/{recipient.language}/{channel} {rendered.field}"
                return Rejected(
                    f"data.{rendered.variable}" if rendered.variable else "template", f"{where}: {rendered.message}"
                )
            address = str(getattr(recipient, ADDRESS_COLUMNS[channel]))
            drafts.append(_Draft(int(recipient.id), channel, address, recipient.language, rendered, due_at))
    return drafts


# --- from an outbox row (the prepaid relay) to an event ------------------------------------------------------

OUTBOX_EVENTS: Mapping[str, EventKind] = {
    "warning": EventKind.LOW_BALANCE,
    "trip": EventKind.TRIPPED,
    "close": EventKind.RESTORED,
    "recharged": EventKind.RECHARGE_RECEIVED,
}
"""Prepaid outbox kinds that tenants hear about; the others (deferred trips, remote operations) are internal."""


def event_from_outbox(
    conn: Connection, kind: str, key: str, payload: Mapping[str, Any], created_at: dt.datetime
) -> NotificationEvent | None:
    """The notification for a prepaid outbox row, or None when its kind is not notified or its wallet has no
    account (a bare ledger wallet). Money is formatted in the site's currency, times in site-local time."""
    event_kind = OUTBOX_EVENTS.get(kind)
    wallet_id = payload.get("wallet_account_id")
    if event_kind is None or not isinstance(wallet_id, int):
        return None
    found = conn.execute(
        select(accounts.c.id, accounts.c.account_no, accounts.c.name, sites.c.id.label("site_id"), sites.c.timezone)
        .add_columns(sites.c.currency)
        .join(sites, sites.c.id == accounts.c.site_id)
        .where(accounts.c.wallet_account_id == wallet_id)
    ).first()
    if found is None:
        return None
    money = currency_of(str(found.currency))
    local = created_at.astimezone(ZoneInfo(str(found.timezone)))
    data = {"account_no": found.account_no, "room": room_of(conn, int(found.id)) or found.name}
    data["time"] = local.strftime("%Y-%m-%d %H:%M")
    for field_name, micros_key in (
        ("balance", "balance_micros"),
        ("level", "level_micros"),
        ("amount", "amount_micros"),
    ):
        if isinstance(payload.get(micros_key), int):
            data[field_name] = format_money(int(payload[micros_key]), money)
    data["channel"] = str(payload.get("channel", ""))
    return NotificationEvent(event_kind, f"outbox:{key}", int(found.site_id), created_at, int(found.id), data)


def room_of(conn: Connection, account_id: int) -> str | None:
    """The room number of the account's first open meter assignment, if it has one."""
    return conn.execute(
        select(rooms.c.number)
        .join(meter_assignments, meter_assignments.c.room_id == rooms.c.id)
        .where(meter_assignments.c.account_id == account_id, meter_assignments.c.valid_to.is_(None))
        .order_by(meter_assignments.c.id)
        .limit(1)
    ).scalar_one_or_none()


# --- tracking: delivered, resend, the log ------------------------------------------------------------------


def message_id(notification_id: int, resends: int) -> str:
    """The idempotency key a provider sees: stable across retries, new for each resend."""
    return f"ntf-{notification_id}-{resends}"


def mark_delivered(conn: Connection, notification_id: int, now: dt.datetime) -> bool:
    """Record a provider's delivery receipt; True when the message was sent and is now delivered."""
    result = conn.execute(
        update(notifications)
        .where(notifications.c.id == notification_id, notifications.c.state == "sent")
        .values(state="delivered", delivered_at=now)
    )
    return result.rowcount == 1


def resend(conn: Connection, notification_id: int, *, actor: str, reason: str, now: dt.datetime) -> Rejected | None:
    """Queue a sent, delivered or failed message again as a new message id (audited)."""
    row = conn.execute(select(notifications).where(notifications.c.id == notification_id)).first()
    if row is None:
        return Rejected("notification", f"no notification {notification_id}")
    if row.state == "queued":
        return Rejected("state", f"notification {notification_id} is queued already")
    if row.resends >= MAX_RESENDS:
        return Rejected("resends", f"notification {notification_id} was resent {MAX_RESENDS} times already")
    requeued = conn.execute(
        update(notifications)
        .where(notifications.c.id == notification_id, notifications.c.state == row.state)
        .values(
            state="queued",
            attempts=0,
            resends=notifications.c.resends + 1,
            next_attempt_at=now,
            claimed_by=None,
            claimed_until=None,
            last_error=None,
            provider_id=None,
            sent_at=None,
            delivered_at=None,
        )
    )
    if requeued.rowcount != 1:  # a worker or another operator changed it since we read it
        return Rejected("state", f"notification {notification_id} changed while resending; try again")
    # The previous attempt's outcome is kept here: the row now tracks the new message id.
    detail = {
        "previous_state": row.state,
        "previous_message_id": message_id(notification_id, int(row.resends)),
        "previous_provider_id": row.provider_id or "",
        "previous_error": (row.last_error or "")[:500],
    }
    record_audit(conn, actor, "resend_notification", f"notification:{notification_id}", reason, detail, now)
    return None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: int
    message_id: str
    event_key: str
    event: str
    recipient_id: int
    channel: str
    address: str
    language: str
    subject: str
    body: str
    state: str
    attempts: int
    next_attempt_at: dt.datetime
    provider_id: str | None
    last_error: str | None
    created_at: dt.datetime
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None


def delivery_log(
    conn: Connection,
    *,
    event_key: str | None = None,
    recipient_id: int | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[DeliveryRecord]:
    """Messages, newest first, filtered by event key, recipient and/or state; at most ``limit`` rows."""
    assert 0 < limit <= MAX_LOG_ROWS, f"limit must be 1..{MAX_LOG_ROWS}"
    query = select(notifications).order_by(notifications.c.id.desc()).limit(limit)
    for column, value in (
        (notifications.c.event_key, event_key),
        (notifications.c.recipient_id, recipient_id),
        (notifications.c.state, state),
    ):
        if value is not None:
            query = query.where(column == value)
    return [_record(r) for r in conn.execute(query)]


def _record(r: Any) -> DeliveryRecord:
    return DeliveryRecord(
        int(r.id),
        message_id(int(r.id), int(r.resends)),
        r.event_key,
        r.event,
        int(r.recipient_id),
        r.channel,
        r.address,
        r.language,
        r.subject,
        r.body,
        r.state,
        int(r.attempts),
        r.next_attempt_at,
        r.provider_id,
        r.last_error,
        r.created_at,
        r.sent_at,
        r.delivered_at,
    )


# --- delivery ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message this worker holds the lease on, ready to hand to its channel."""

    notification_id: int
    attempts: int
    message: OutgoingMessage


@dataclass(frozen=True, slots=True)
class RunStats:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    lost_claims: int = 0  # results not recorded because another worker had taken the message over
    given_up: int = 0  # messages whose last attempt never reported back


class DeliveryWorker:
    """Claims due messages, sends them through channel adapters and records the outcome.

    Several workers (in one process or many) may run against one database: a message is claimed by one of them
    at a time, by a conditional UPDATE, for ``lease_s`` seconds. The lease is longer than the send timeout, so a
    live worker always records its result before anyone else may take the message over.
    """

    def __init__(
        self,
        engine: Engine,
        channels: Mapping[str, Channel],
        clock: Callable[[], dt.datetime],
        *,
        worker_id: str | None = None,
        lease_s: int = 120,
        send_timeout_s: float = 30.0,
        batch_size: int = 50,
        rng: random.Random | None = None,
    ) -> None:
        assert 0 < batch_size <= MAX_BATCH, f"batch_size must be 1..{MAX_BATCH}"
        assert 0 < send_timeout_s < lease_s, "the lease must outlast a send, or two workers could hold a message"
        self.engine = engine
        self.channels = dict(channels)
        self.clock = clock
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self.lease_s = lease_s
        self.send_timeout_s = send_timeout_s
        self.batch_size = batch_size
        self.rng = rng or random.Random()

    async def run_once(self) -> RunStats:
        """Claim one batch of due messages and deliver them one after another."""
        given_up = self.give_up_stale()
        claimed = self.claim()
        outcomes = [await self.deliver(c) for c in claimed]
        return RunStats(
            claimed=len(claimed),
            sent=outcomes.count("sent"),
            retried=outcomes.count("retried"),
            failed=outcomes.count("failed"),
            lost_claims=outcomes.count("lost"),
            given_up=given_up,
        )

    async def run_until_idle(self, max_rounds: int = 100) -> RunStats:
        """Repeat ``run_once`` until nothing is due (bounded); the totals."""
        total = RunStats()
        for _ in range(max_rounds):
            stats = await self.run_once()
            total = RunStats(*(a + b for a, b in zip(_fields(total), _fields(stats), strict=True)))
            if stats.claimed == 0:
                break
        return total

    def give_up_stale(self) -> int:
        """Mark failed the messages whose last allowed attempt was claimed and never reported back."""
        now = self.clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(notifications)
                .where(notifications.c.state == "queued", notifications.c.attempts >= MAX_ATTEMPTS, _unclaimed(now))
                .values(
                    state="failed",
                    claimed_by=None,
                    claimed_until=None,
                    last_error=f"gave up: the last of {MAX_ATTEMPTS} attempts never reported a result",
                )
            )
            return int(result.rowcount)

    def claim(self) -> list[Claimed]:
        """Take the lease on up to ``batch_size`` due messages; committed before anything is sent."""
        now = self.clock()
        due = _unclaimed(now) & (notifications.c.state == "queued") & (notifications.c.next_attempt_at <= now)
        due = due & (notifications.c.attempts < MAX_ATTEMPTS)
        claimed: list[Claimed] = []
        with self.engine.begin() as conn:
            ids = conn.execute(
                select(notifications.c.id)
                .where(due)
                .order_by(notifications.c.next_attempt_at, notifications.c.id)
                .limit(self.batch_size)
            ).scalars()
            for notification_id in list(ids):
                # The same condition again: of two workers that selected this row, only one UPDATE matches.
                won = conn.execute(
                    update(notifications)
                    .where(notifications.c.id == notification_id, due)
                    .values(
                        claimed_by=self.worker_id,
                        claimed_until=now + dt.timedelta(seconds=self.lease_s),
                        attempts=notifications.c.attempts + 1,
                    )
                )
                if won.rowcount == 1:
                    row = conn.execute(select(notifications).where(notifications.c.id == notification_id)).one()
                    claimed.append(Claimed(int(row.id), int(row.attempts), _outgoing(row)))
        return claimed

    async def deliver(self, claimed: Claimed) -> str:
        """Send one claimed message and record the outcome: "sent", "retried", "failed" or "lost"."""
        result = await self._send(claimed.message)
        now = self.clock()
        mine = (
            (notifications.c.id == claimed.notification_id)
            & (notifications.c.claimed_by == self.worker_id)
            & (notifications.c.state == "queued")
        )
        released = {"claimed_by": None, "claimed_until": None}
        if result.ok:
            values: dict[str, Any] = {"state": "sent", "sent_at": now, "provider_id": result.provider_id or None}
            outcome = "sent"
        elif result.retryable and claimed.attempts < MAX_ATTEMPTS:
            delay_s = retry_delay_s(claimed.attempts, self.rng.random())
            values = {"next_attempt_at": now + dt.timedelta(seconds=delay_s), "last_error": result.reason[:2000]}
            outcome = "retried"
        else:
            why = result.reason if not result.retryable else f"{result.reason} (after {claimed.attempts} attempts)"
            values = {"state": "failed", "last_error": why[:2000]}
            outcome = "failed"
        with self.engine.begin() as conn:
            recorded = conn.execute(update(notifications).where(mine).values(**values, **released))
        return outcome if recorded.rowcount == 1 else "lost"

    async def _send(self, message: OutgoingMessage) -> DeliveryResult:
        channel = self.channels.get(message.channel)
        if channel is None:
            return DeliveryResult(ok=False, retryable=True, reason=f"no adapter configured for {message.channel!r}")
        try:
            return await asyncio.wait_for(channel.send(message), self.send_timeout_s)
        except TimeoutError:
            return DeliveryResult(ok=False, retryable=True, reason=f"timed out after {self.send_timeout_s} s")
        except Exception as error:  # an adapter broke its contract; keep the message rather than lose it
            return DeliveryResult(ok=False, retryable=True, reason=f"adapter raised {error!r}"[:500])


def _fields(stats: RunStats) -> tuple[int, ...]:
    return (stats.claimed, stats.sent, stats.retried, stats.failed, stats.lost_claims, stats.given_up)


def _unclaimed(now: dt.datetime) -> Any:
    return or_(notifications.c.claimed_until.is_(None), notifications.c.claimed_until <= now)


def _outgoing(row: Any) -> OutgoingMessage:
    return OutgoingMessage(
        message_id=message_id(int(row.id), int(row.resends)),
        channel=row.channel,
        address=row.address,
        subject=row.subject,
        body=row.body,
        language=row.language,
        event=row.event,
        data=json.loads(row.data),
    )
