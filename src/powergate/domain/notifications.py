"""Notification rules: which events exist, which are urgent, quiet hours, templates and retry timing.

Pure: no I/O and no clock (every time is passed in). The services layer (``powergate.services.notify``) turns an
event into stored messages with these rules, and a delivery worker sends them.

Invariants kept here:
- The event kinds are a closed list (``EventKind``); ``URGENT_EVENTS`` (trip and restore) are never deferred by
  quiet hours, because a tenant whose supply was cut or restored must know now, whatever the hour.
- Quiet hours are a window in site-local wall-clock time; ``next_allowed_at`` returns a UTC instant that is
  outside the window (or ``now`` itself when it already is). A window whose start is after its end wraps past
  midnight (22:00-08:00). Daylight-saving gaps resolve through ``zoneinfo`` (the fold-0 reading).
- Templates use ``${name}`` placeholders (``string.Template``). Rendering never guesses: a missing variable is an
  error value naming the variable, and so is a malformed placeholder. Every event has a default template in every
  supported language, so an event can always be rendered.
- The channel contract (``OutgoingMessage``, ``DeliveryResult``, ``Channel``) lives here, in the innermost
  layer, so that the delivery worker (services) and the adapters (``powergate.notify``) can both depend on it,
  as ``domain.payments`` does for payment adapters. ``message_id`` is the idempotency key of one message to one
  recipient; ``Channel.send`` reports provider errors as values, never raises for them.
- Retries are bounded (``MAX_ATTEMPTS``) and spaced by exponential backoff capped at ``MAX_BACKOFF_S``; jitter is
  a number in [0, 1) the caller draws, so the rule stays deterministic under test.
"""

from __future__ import annotations

import datetime as dt
import enum
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from zoneinfo import ZoneInfo


class EventKind(enum.StrEnum):
    """Everything that can be notified (issue 7, item 1). Past tense: these are events, not commands."""

    LOW_BALANCE = "low_balance"
    TRIPPED = "tripped"
    RESTORED = "restored"
    RECHARGE_RECEIVED = "recharge_received"
    REFUND = "refund"
    METER_ALARM = "meter_alarm"
    METER_OFFLINE = "meter_offline"
    RECONCILIATION_DISCREPANCY = "reconciliation_discrepancy"
    DAILY_REPORT_READY = "daily_report_ready"
    RUNOUT_FORECAST = "runout_forecast"
    BILL_ISSUED = "bill_issued"
    BILL_OVERDUE = "bill_overdue"


URGENT_EVENTS = frozenset({EventKind.TRIPPED, EventKind.RESTORED})
"""Sent at any hour: quiet hours never defer them."""

CHANNELS = ("email", "sms", "voice", "wechat", "push", "webhook")
LANGUAGES = ("zh-CN", "en")
MAX_EVENT_KEY_CHARS = 200
MAX_DATA_ITEMS = 40
MAX_DATA_VALUE_CHARS = 500
MAX_TEMPLATE_CHARS = 4_000
MAX_ATTEMPTS = 12
"""After this many attempts a retryable failure becomes a permanent one: a limit on everything (style rule 11)."""
BASE_BACKOFF_S = 30
MAX_BACKOFF_S = 3_600


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    """Something that happened and that someone should hear about.

    ``key`` is the idempotency key (for example the outbox row's key): notifying the same key twice produces no
    new messages. ``account_id`` is None for site-wide events (a reconciliation discrepancy, a daily report).
    ``data`` holds the template variables, already formatted as text (money by ``format_money``).
    """

    kind: EventKind
    key: str
    site_id: int
    occurred_at: dt.datetime
    account_id: int | None = None
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventProblem:
    """An event that cannot be notified, with the field at fault."""

    field: str
    message: str


def check_event(event: NotificationEvent) -> EventProblem | None:
    """The first problem with an event's fields, or None when it can be notified."""
    if not event.key.strip() or len(event.key) > MAX_EVENT_KEY_CHARS:
        return EventProblem("key", f"event key must be 1..{MAX_EVENT_KEY_CHARS} characters")
    if event.occurred_at.tzinfo is None:
        return EventProblem("occurred_at", "event time must be timezone-aware")
    if len(event.data) > MAX_DATA_ITEMS:
        return EventProblem("data", f"at most {MAX_DATA_ITEMS} template variables, got {len(event.data)}")
    for name, value in event.data.items():
        if len(value) > MAX_DATA_VALUE_CHARS:
            return EventProblem(f"data.{name}", f"value longer than {MAX_DATA_VALUE_CHARS} characters")
    return None


# --- the channel contract --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to one recipient on one channel."""

    message_id: str  # idempotency key: providers that support it get it; the webhook id header carries it
    channel: str  # "email" | "sms" | "voice" | "wechat" | "push" | "webhook"
    address: str  # e-mail address, phone number, openid, push token, webhook URL
    subject: str
    body: str
    language: str  # "zh-CN" | "en"
    event: str  # event kind
    data: Mapping[str, str]  # template variables (SMS/WeChat template parameters, webhook payload)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a channel made of one attempt to send a message."""

    ok: bool
    retryable: bool = True  # False: permanent failure (bad address, rejected by provider)
    provider_id: str = ""  # the provider's message id
    reason: str = ""


class Channel(Protocol):
    """A delivery channel adapter: e-mail, SMS, voice, WeChat, push or webhook."""

    name: str

    async def send(self, message: OutgoingMessage) -> DeliveryResult: ...


# --- quiet hours -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window in site-local time during which non-urgent messages wait. start == end means none."""

    start: dt.time
    end: dt.time

    def contains(self, local: dt.time) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # wraps past midnight


def next_allowed_at(now: dt.datetime, timezone: ZoneInfo, quiet: QuietHours | None, kind: EventKind) -> dt.datetime:
    """When a message about ``kind`` may go out: ``now``, or the end of the quiet window it falls in (UTC)."""
    assert now.tzinfo is not None, "now must be timezone-aware"
    if quiet is None or kind in URGENT_EVENTS:
        return now
    local = now.astimezone(timezone)
    if not quiet.contains(local.time().replace(tzinfo=None)):
        return now
    end_date = local.date()
    if quiet.start > quiet.end and local.time().replace(tzinfo=None) >= quiet.start:
        end_date += dt.timedelta(days=1)  # in the evening part of a window that ends tomorrow morning
    end_local = dt.datetime.combine(end_date, quiet.end, tzinfo=timezone)
    return max(now, end_local.astimezone(dt.UTC))


# --- templates ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """Why a template cannot be rendered: the field (``subject`` / ``body``) and the variable at fault."""

    field: str
    message: str
    variable: str = ""


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    body: str


def template_variables(text: str) -> tuple[str, ...] | TemplateProblem:
    """The ``${name}`` variables a template uses, in order of first use, or the malformed placeholder."""
    template = string.Template(text)
    if not template.is_valid():
        return TemplateProblem("template", "malformed placeholder: use ${name} and $$ for a dollar sign")
    return tuple(dict.fromkeys(template.get_identifiers()))


def render_text(field_name: str, text: str, data: Mapping[str, str]) -> str | TemplateProblem:
    """``text`` with every ``${name}`` replaced from ``data``; a missing variable is a problem naming it."""
    if len(text) > MAX_TEMPLATE_CHARS:
        return TemplateProblem(field_name, f"template longer than {MAX_TEMPLATE_CHARS} characters")
    names = template_variables(text)
    if isinstance(names, TemplateProblem):
        return TemplateProblem(field_name, names.message)
    for name in names:
        if name not in data:
            return TemplateProblem(field_name, f"variable ${{{name}}} has no value", name)
    return string.Template(text).substitute(data)


def render(subject: str, body: str, data: Mapping[str, str]) -> Rendered | TemplateProblem:
    """Render a subject and body together; the first problem wins."""
    rendered_subject = render_text("subject", subject, data)
    if isinstance(rendered_subject, TemplateProblem):
        return rendered_subject
    rendered_body = render_text("body", body, data)
    if isinstance(rendered_body, TemplateProblem):
        return rendered_body
    return Rendered(rendered_subject, rendered_body)


def missing_variables(subject: str, body: str, data: Mapping[str, str]) -> tuple[str, ...]:
    """Every variable the templates use that ``data`` lacks (for a preview that lists them all)."""
    names: list[str] = []
    for text in (subject, body):
        found = template_variables(text)
        if not isinstance(found, TemplateProblem):
            names.extend(n for n in found if n not in data and n not in names)
    return tuple(names)


_K = EventKind
DEFAULT_TEMPLATES: Mapping[tuple[EventKind, str], tuple[str, str]] = {
    (_K.LOW_BALANCE, "en"): (
        "Low balance: ${balance}",
        "Account ${account_no} (${room}) has ${balance} left, below the ${level} warning level. Please recharge.",
    ),
    (_K.LOW_BALANCE, "zh-CN"): (
        "余额不足：${balance}",
        "户号 ${account_no}（${room}）余额 ${balance}，已低于 ${level} 预警线，请及时充值。",
    ),
    (_K.TRIPPED, "en"): (
        "Supply cut off",
        "Supply to account ${account_no} (${room}) was cut off at ${time}: balance ${balance}. Recharge to restore.",
    ),
    (_K.TRIPPED, "zh-CN"): (
        "已停电",
        "户号 ${account_no}（${room}）于 ${time} 因余额 ${balance} 已分闸停电，充值后自动恢复供电。",
    ),
    (_K.RESTORED, "en"): (
        "Supply restored",
        "Supply to account ${account_no} (${room}) was restored at ${time}. Balance: ${balance}.",
    ),
    (_K.RESTORED, "zh-CN"): (
        "已恢复供电",
        "户号 ${account_no}（${room}）已于 ${time} 合闸恢复供电，当前余额 ${balance}。",
    ),
    (_K.RECHARGE_RECEIVED, "en"): (
        "Recharge received: ${amount}",
        "We received ${amount} for account ${account_no} via ${channel} at ${time}. Balance: ${balance}.",
    ),
    (_K.RECHARGE_RECEIVED, "zh-CN"): (
        "充值到账：${amount}",
        "户号 ${account_no} 于 ${time} 通过${channel}充值 ${amount} 已到账，当前余额 ${balance}。",
    ),
    (_K.REFUND, "en"): (
        "Refund: ${amount}",
        "A refund of ${amount} for account ${account_no} was made at ${time}. Balance: ${balance}.",
    ),
    (_K.REFUND, "zh-CN"): (
        "退费：${amount}",
        "户号 ${account_no} 于 ${time} 退费 ${amount}，当前余额 ${balance}。",
    ),
    (_K.METER_ALARM, "en"): (
        "Meter alarm: ${alarm}",
        "Meter ${meter} (${room}) reported ${alarm} at ${time}.",
    ),
    (_K.METER_ALARM, "zh-CN"): (
        "电表告警：${alarm}",
        "电表 ${meter}（${room}）于 ${time} 上报告警：${alarm}。",
    ),
    (_K.METER_OFFLINE, "en"): (
        "Meter offline for ${hours} h",
        "Meter ${meter} (${room}) has not been heard from since ${last_seen} (${hours} hours).",
    ),
    (_K.METER_OFFLINE, "zh-CN"): (
        "电表离线 ${hours} 小时",
        "电表 ${meter}（${room}）自 ${last_seen} 起离线，已 ${hours} 小时。",
    ),
    (_K.RECONCILIATION_DISCREPANCY, "en"): (
        "Reconciliation discrepancy on ${date}",
        "Reconciliation of ${site} for ${date} found ${count} discrepancies totalling ${amount}.",
    ),
    (_K.RECONCILIATION_DISCREPANCY, "zh-CN"): (
        "对账差异：${date}",
        "${site} ${date} 对账发现 ${count} 处差异，合计 ${amount}。",
    ),
    (_K.DAILY_REPORT_READY, "en"): (
        "Daily report for ${date}",
        "The daily report of ${site} for ${date} is ready: ${energy} consumed, ${amount} charged.",
    ),
    (_K.DAILY_REPORT_READY, "zh-CN"): (
        "${date} 日报",
        "${site} ${date} 日报已生成：用电 ${energy}，扣费 ${amount}。",
    ),
    (_K.RUNOUT_FORECAST, "en"): (
        "Credit runs out in about ${days} days",
        "At the current rate, account ${account_no} (${room}) will run out of credit in about ${days} days.",
    ),
    (_K.RUNOUT_FORECAST, "zh-CN"): (
        "预计 ${days} 天后余额用尽",
        "按当前用电速度，户号 ${account_no}（${room}）余额预计 ${days} 天后用尽，请及时充值。",
    ),
    (_K.BILL_ISSUED, "en"): (
        "Bill ${bill_no}: ${amount} due by ${due}",
        "Your bill ${bill_no} for account ${account_no} (${room}), ${period}, is ${amount}. Please pay by ${due}.",
    ),
    (_K.BILL_ISSUED, "zh-CN"): (
        "账单 ${bill_no}：${amount}，请于 ${due} 前缴纳",
        "户号 ${account_no}（${room}）${period} 账单 ${bill_no} 金额 ${amount}，请于 ${due} 前缴纳。",
    ),
    (_K.BILL_OVERDUE, "en"): (
        "Overdue: bill ${bill_no} (${amount})",
        "Bill ${bill_no} for account ${account_no} (${room}), ${period}, of ${amount} was due on ${due} and is "
        "not paid yet. Please pay it now.",
    ),
    (_K.BILL_OVERDUE, "zh-CN"): (
        "欠费提醒：账单 ${bill_no}（${amount}）",
        "户号 ${account_no}（${room}）${period} 账单 ${bill_no} 金额 ${amount} 已于 ${due} 到期未缴，请尽快缴纳。",
    ),
}

SAMPLE_DATA: Mapping[str, str] = {
    "account_no": "A-1001",
    "room": "1-301",
    "balance": "¥8.50",
    "level": "¥10.00",
    "time": "2026-11-25 21:00",
    "amount": "¥100.00",
    "channel": "WeChat Pay",
    "alarm": "cover open",
    "meter": "000000000001",
    "hours": "24",
    "last_seen": "2026-11-24 21:00",
    "date": "2026-11-25",
    "site": "Sunrise Apartments",
    "count": "3",
    "energy": "1234.56 kWh",
    "days": "3",
    "bill_no": "B202611-P-12-01",
    "due": "2026-12-16",
    "period": "2026-11-01..2026-11-30",
}
"""Variables a preview renders with: every name the default templates use has a value here."""


def default_template(kind: EventKind, language: str) -> tuple[str, str]:
    """The built-in (subject, body) for an event in a language; an unknown language falls back to zh-CN."""
    return DEFAULT_TEMPLATES.get((kind, language)) or DEFAULT_TEMPLATES[(kind, "zh-CN")]


# --- retries -----------------------------------------------------------------------------------------------


def retry_delay_s(attempts: int, jitter: float) -> int:
    """Seconds to wait before attempt ``attempts + 1``: exponential, capped, with up to 50 % added jitter.

    ``jitter`` in [0, 1) is drawn by the caller; it spreads retries of many messages that failed together in one
    outage, so they do not all hit the recovering provider in the same second.
    """
    assert attempts >= 1, "a delay follows at least one attempt"
    assert 0.0 <= jitter < 1.0, "jitter is a fraction in [0, 1)"
    base_s = min(MAX_BACKOFF_S, BASE_BACKOFF_S << min(attempts - 1, 20))
    return base_s + int(base_s * jitter) // 2
