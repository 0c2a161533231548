"""Notification rules: urgent events, quiet hours in site-local time, template rendering and retry timing."""

from __future__ import annotations

import datetime as dt
import string
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.domain.notifications import (
    DEFAULT_TEMPLATES,
    LANGUAGES,
    MAX_BACKOFF_S,
    SAMPLE_DATA,
    URGENT_EVENTS,
    EventKind,
    NotificationEvent,
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

SHANGHAI = ZoneInfo("Asia/Shanghai")
NIGHT = QuietHours(dt.time(22, 0), dt.time(8, 0))
LUNCH = QuietHours(dt.time(12, 0), dt.time(13, 30))


def local(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=SHANGHAI).astimezone(dt.UTC)


def test_only_trip_and_restore_are_urgent() -> None:
    assert {EventKind.TRIPPED, EventKind.RESTORED} == URGENT_EVENTS


@pytest.mark.parametrize(
    ("now", "quiet", "expected"),
    [
        (local(25, 21, 59), NIGHT, local(25, 21, 59)),  # before the window: now
        (local(25, 22, 0), NIGHT, local(26, 8, 0)),  # the window's first minute: tomorrow morning
        (local(25, 23, 30), NIGHT, local(26, 8, 0)),
        (local(26, 3, 0), NIGHT, local(26, 8, 0)),  # after midnight: this morning
        (local(26, 8, 0), NIGHT, local(26, 8, 0)),  # the end is outside the window
        (local(25, 12, 45), LUNCH, local(25, 13, 30)),  # a window that does not wrap
        (local(25, 14, 0), LUNCH, local(25, 14, 0)),
        (local(25, 3, 0), QuietHours(dt.time(0, 0), dt.time(0, 0)), local(25, 3, 0)),  # empty window
        (local(25, 3, 0), None, local(25, 3, 0)),
    ],
)
def test_a_warning_in_quiet_hours_waits_for_the_end_of_the_window_in_site_local_time(
    now: dt.datetime, quiet: QuietHours | None, expected: dt.datetime
) -> None:
    assert next_allowed_at(now, SHANGHAI, quiet, EventKind.LOW_BALANCE) == expected


@pytest.mark.parametrize("kind", sorted(URGENT_EVENTS))
def test_a_trip_or_restore_notice_goes_out_at_three_in_the_morning(kind: EventKind) -> None:
    assert next_allowed_at(local(26, 3, 0), SHANGHAI, NIGHT, kind) == local(26, 3, 0)


def test_quiet_hours_follow_the_site_clock_across_a_daylight_saving_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-03-29: clocks go from 02:00 to 03:00. 01:30 local is in 22:00-08:00; the end is 08:00 CEST = 06:00Z.
    now = dt.datetime(2026, 3, 29, 1, 30, tzinfo=berlin).astimezone(dt.UTC)
    assert next_allowed_at(now, berlin, NIGHT, EventKind.LOW_BALANCE) == dt.datetime(2026, 3, 29, 6, 0, tzinfo=dt.UTC)


@given(
    st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 1, 1), timezones=st.just(dt.UTC)),
    st.times(),
    st.times(),
)
def test_the_next_allowed_time_is_never_earlier_than_now_nor_inside_the_window(
    now: dt.datetime, start: dt.time, end: dt.time
) -> None:
    quiet = QuietHours(start.replace(second=0, microsecond=0), end.replace(second=0, microsecond=0))
    allowed = next_allowed_at(now, SHANGHAI, quiet, EventKind.DAILY_REPORT_READY)
    assert now <= allowed <= now + dt.timedelta(days=1)
    assert not quiet.contains(allowed.astimezone(SHANGHAI).time())


@pytest.mark.parametrize(
    ("text", "data", "expected"),
    [
        ("Balance ${balance}", {"balance": "¥8.50"}, "Balance ¥8.50"),
        ("余额 ${balance}，请充值", {"balance": "¥8.50"}, "余额 ¥8.50，请充值"),
        ("Price $$1 for ${room}", {"room": "1-301"}, "Price $1 for 1-301"),
        ("no variables", {}, "no variables"),
        ("${a}${a}", {"a": "x", "unused": "y"}, "xx"),
    ],
)
def test_templates_fill_every_placeholder(text: str, data: dict[str, str], expected: str) -> None:
    assert render("s", text, data) == Rendered("s", expected)


def test_a_missing_variable_is_an_error_naming_the_variable_and_the_field() -> None:
    problem = render("Low balance", "Account ${account_no} has ${balance}", {"account_no": "A-1"})
    assert problem == TemplateProblem("body", "variable ${balance} has no value", "balance")
    assert isinstance(render("${x}", "", {}), TemplateProblem)


@pytest.mark.parametrize("text", ["costs $5", "${unclosed", "${1bad}"])
def test_a_malformed_placeholder_is_an_error_not_a_guess(text: str) -> None:
    assert isinstance(template_variables(text), TemplateProblem)
    problem = render("s", text, {})
    assert isinstance(problem, TemplateProblem) and problem.field == "body"


def test_missing_variables_lists_all_of_them_in_order_of_use() -> None:
    assert missing_variables("${a} ${b}", "${c} ${a}", {"b": "1"}) == ("a", "c")


@pytest.mark.parametrize("kind", list(EventKind))
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_event_has_a_default_template_in_every_language_that_renders_with_the_sample_data(
    kind: EventKind, language: str
) -> None:
    assert (kind, language) in DEFAULT_TEMPLATES
    subject, body = default_template(kind, language)
    rendered = render(subject, body, SAMPLE_DATA)
    assert isinstance(rendered, Rendered) and rendered.subject and rendered.body
    assert "$" not in rendered.body


def test_an_unknown_language_falls_back_to_chinese() -> None:
    assert default_template(EventKind.TRIPPED, "fr") == default_template(EventKind.TRIPPED, "zh-CN")


@pytest.mark.parametrize(
    ("attempts", "jitter", "expected_s"),
    [(1, 0.0, 30), (2, 0.0, 60), (3, 0.0, 120), (1, 0.999, 44), (8, 0.0, 3_600), (12, 0.0, 3_600), (40, 0.5, 4_500)],
)
def test_retries_back_off_exponentially_up_to_a_cap_with_jitter(attempts: int, jitter: float, expected_s: int) -> None:
    assert retry_delay_s(attempts, jitter) == expected_s


@given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0.0, max_value=0.999999))
def test_a_retry_delay_is_always_positive_and_bounded(attempts: int, jitter: float) -> None:
    assert 30 <= retry_delay_s(attempts, jitter) < MAX_BACKOFF_S * 3 // 2 + 1


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (NotificationEvent(EventKind.TRIPPED, "", 1, local(25, 12)), "key"),
        (NotificationEvent(EventKind.TRIPPED, "k" * 201, 1, local(25, 12)), "key"),
        (NotificationEvent(EventKind.TRIPPED, "k", 1, dt.datetime(2026, 11, 25)), "occurred_at"),
        (NotificationEvent(EventKind.TRIPPED, "k", 1, local(25, 12), data={"room": "x" * 501}), "data.room"),
        (
            NotificationEvent(EventKind.TRIPPED, "k", 1, local(25, 12), data={f"v{i}": "" for i in range(41)}),
            "data",
        ),
    ],
)
def test_an_event_with_a_bad_field_is_refused_naming_the_field(event: NotificationEvent, field: str) -> None:
    problem = check_event(event)
    assert problem is not None and problem.field == field


def test_sample_data_covers_every_variable_of_the_default_templates() -> None:
    used = {
        name
        for subject, body in DEFAULT_TEMPLATES.values()
        for text in (subject, body)
        for name in string.Template(text).get_identifiers()
    }
    assert used <= set(SAMPLE_DATA)
