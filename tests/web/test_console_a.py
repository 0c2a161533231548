"""Console pages of the first half: dashboard, monitoring grid (and its partial), room detail and its operations.

A small site is seeded through the real services (organisation, site, building, floors, rooms, staged and opened
accounts, meters, credits) plus reported meter status, samples and events; pages are fetched through the real app
with real session logins, on SQLite and PostgreSQL.

    Gardens / B1 / floor 1: 101 open, 100 yuan, online          -> normal
                            102 open, 100 yuan, offline         -> offline
                            103 open, 100 yuan, relay open      -> tripped
                   floor 2: 201 open, 5 yuan (< 10), online     -> low
                            202 no meter, no account            -> no_account
                            203 pre-staged account with a meter -> no_account
                            204 open, 0 yuan, power-protect     -> protect
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, insert, select

from powergate.domain.ledger import recharge_entry
from powergate.domain.structure import PaymentChannel, RoomUse
from powergate.services import accounts, prepaid
from powergate.services import samples as sample_store
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.audit import audit_records
from powergate.store.tables import meters
from powergate.store.tables_commands import meter_commands
from powergate.store.tables_headend import meter_events, meter_status

YUAN = 1_000_000
STAFF_ROLES = ("admin", "operator", "finance", "viewer")


@dataclass
class Seeded:
    org_id: int
    site_id: int
    building_id: int
    floors: dict[str, int]
    rooms: dict[str, int]
    wallets: dict[str, str]


def _ok(value: Any) -> Any:
    assert not isinstance(value, accounts.Rejected), str(value)
    return value


def seed(web: Any, code: str = "ORG1") -> Seeded:
    """The site above, built through the services at the app's clock."""
    now = web.clock()
    org_id = web.org(code)
    with web.engine.begin() as conn:
        site = _ok(
            accounts.create_site(
                conn,
                org_id,
                f"Gardens {code}",
                timezone="Asia/Shanghai",
                currency="CNY",
                channels=[PaymentChannel.CASHIER, PaymentChannel.WECHAT],
                actor="system:test",
                now=now,
            )
        )
        building = _ok(accounts.create_building(conn, site, "B1"))
        floors = {name: _ok(accounts.create_floor(conn, building, name)) for name in ("1", "2")}
        tariff = f"flat-{code}"
        if conn.execute(select(meters.c.id).where(meters.c.tariff_id == tariff)).first() is None:
            metering.add_tariff(conn, tariff, "Flat 1 yuan", "electricity", "{}", now)
            metering.add_tariff(conn, f"tou-{code}", "TOU commercial", "electricity", "{}", now)
        rooms: dict[str, int] = {}
        wallets: dict[str, str] = {}
        for number in ("101", "102", "103", "201", "202", "203", "204"):
            rooms[number] = _ok(accounts.create_room(conn, floors[number[0]], number, 4_500, RoomUse.APARTMENT))
        for number, balance in (("101", 100), ("102", 100), ("103", 100), ("201", 5), ("203", 0), ("204", 0)):
            account = _ok(
                accounts.stage_account(conn, site, f"A-{number}", f"Tenant {number}", actor="system:test", now=now)
            )
            meter = f"{code}-M{number}"
            _ok(
                accounts.attach_meter(
                    conn,
                    meter,
                    rooms[number],
                    account,
                    tariff_id=tariff,
                    actor="system:test",
                    reason="installed",
                    now=now,
                )
            )
            view = accounts.account_view(conn, account)
            assert view is not None
            wallets[number] = view.wallet
            if number != "203":
                _ok(accounts.open_account(conn, account, actor="system:test", reason="lease signed", now=now))
            if balance:
                entry = recharge_entry(f"seed:{meter}", view.wallet, "cashier", balance * YUAN, now, "seed")
                ledger_store.post(conn, entry, now)
            conn.execute(
                insert(meter_status).values(
                    meter_id=meter,
                    online=number != "102",
                    last_seen_at=now,
                    last_read_at=now,
                    relay_open=number == "103",
                    updated_at=now,
                )
            )
        policy = prepaid.WalletPolicy(power_protect=True)
        wallet_id = _wallet_id(conn, wallets["204"])
        assert prepaid.set_policy(conn, wallet_id, policy, now) is None
        sample_store.store(
            conn,
            [
                sample_store.Sample(f"{code}-M101", now - dt.timedelta(minutes=m), 2_201, 4_500, 9_800, 990, 5_000)
                for m in (45, 30, 15)
            ],
        )
        conn.execute(
            insert(meter_events).values(meter_id=f"{code}-M101", kind="cover_open", at=now, recorded_at=now, detail="")
        )
    return Seeded(org_id, site, building, floors, rooms, wallets)


def _wallet_id(conn: Connection, wallet: str) -> int:
    from powergate.store.tables import ledger_accounts

    return int(conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.code == wallet)).scalar_one())


def _lang(client: TestClient, lang: str) -> TestClient:
    client.cookies.set("lang", lang)
    return client


def _tiles(html: str) -> list[str]:
    """The room numbers of the tiles in a grid, in page order."""
    return re.findall(r'<a class="tile s-[a-z_]+" href="/console/rooms/\d+"[^>]*><b>([^<]+)</b>', html)


def _tile_states(html: str) -> dict[str, str]:
    return dict(
        (number, state)
        for state, number in re.findall(
            r'<a class="tile s-([a-z_]+)" href="/console/rooms/\d+"[^>]*><b>([^<]+)</b>', html
        )
    )


# -- pages for every role and language ----------------------------------------------------------------------


def test_every_page_renders_for_each_staff_role_in_both_languages(web: Any) -> None:
    seeded = seed(web)
    room = seeded.rooms["101"]
    pages = ["/console/", "/console/monitor", f"/console/monitor?site={seeded.site_id}", f"/console/rooms/{room}"]
    words = {"zh-CN": ("房间监控", "仪表盘"), "en": ("Monitoring", "Dashboard")}
    for role in STAFF_ROLES:
        client = web.client(role, seeded.org_id)
        for lang, expected in words.items():
            _lang(client, lang)
            for path in pages:
                answer = client.get(path)
                assert answer.status_code == 200, f"{role} {lang} {path}: {answer.status_code} {answer.text[:300]}"
                assert answer.headers["content-type"].startswith("text/html")
                assert all(word in answer.text for word in expected), f"{role} {lang} {path}: not in {lang}"
                assert "<script>" not in answer.text and ' style="' not in answer.text, "the CSP forbids inline code"
            curves = client.get(f"/console/rooms/{room}/curves.json")
            assert curves.status_code == 200
            assert curves.json()["meters"]["ORG1-M101"]["power_dw"] == [9_800, 9_800, 9_800]


def test_the_dashboard_counts_meters_and_links_each_number_to_the_filtered_grid(web: Any) -> None:
    seeded = seed(web)
    page = _lang(web.client("viewer", seeded.org_id), "en").get("/console/").text
    site = seeded.site_id
    # 6 meters: 5 online, 1 offline, 1 tripped, 1 low (201); the protected one at 0 yuan is not "low"
    assert re.search(
        rf'href="/console/monitor\?site={site}"><span class="label">Meters online</span>'
        r'<span class="value">5</span><span class="of">/ 6</span>',
        page,
    )
    for state, count in (("offline", 1), ("tripped", 1), ("low", 1)):
        assert re.search(
            rf'href="/console/monitor\?site={site}&amp;state={state}">'
            rf'<span class="label">[^<]+</span><span class="value">{count}</span>',
            page,
        ), state
    assert "Gardens ORG1</a>" in page


# -- roles and organisations ---------------------------------------------------------------------------------


def _op_forms(html: str) -> set[str]:
    return set(re.findall(r'<form class="op"[^>]*data-op="([a-z_]+)"', html))


def test_a_viewer_sees_no_operation_and_may_not_post_one(web: Any) -> None:
    seeded = seed(web)
    room = seeded.rooms["101"]
    viewer = web.client("viewer", seeded.org_id)
    assert _op_forms(viewer.get(f"/console/rooms/{room}").text) == set()
    refused = viewer.post(f"/console/rooms/{room}/ops/trip", data={"reason": "x", "idempotency_key": str(uuid.uuid4())})
    assert refused.status_code == 403
    operator = _op_forms(web.client("operator", seeded.org_id).get(f"/console/rooms/{room}").text)
    finance = _op_forms(web.client("finance", seeded.org_id).get(f"/console/rooms/{room}").text)
    admin = _op_forms(web.client("admin", seeded.org_id).get(f"/console/rooms/{room}").text)
    assert operator == {"trip", "close", "set_tariff", "alarm_amounts", "temporary_supply", "power_protect"}
    assert finance == {"recharge", "refund"}
    assert admin == operator | finance
    staged = _op_forms(web.client("admin", seeded.org_id).get(f"/console/rooms/{seeded.rooms['203']}").text)
    assert "open_account" in staged and "recharge" not in staged


def test_another_organisations_room_site_and_operations_answer_404(web: Any) -> None:
    seeded = seed(web)
    other_org = web.org("ORG2")
    stranger = web.client("admin", other_org)
    room = seeded.rooms["101"]
    for path in (
        f"/console/rooms/{room}",
        f"/console/rooms/{room}/commands",
        f"/console/rooms/{room}/curves.json",
        f"/console/monitor?site={seeded.site_id}",
        f"/console/monitor/grid?site={seeded.site_id}",
    ):
        assert stranger.get(path).status_code == 404, path
    posted = stranger.post(
        f"/console/rooms/{room}/ops/trip",
        data={"reason": "not mine", "confirm": "yes", "idempotency_key": str(uuid.uuid4())},
    )
    assert posted.status_code == 404
    with web.engine.connect() as conn:
        assert conn.execute(select(meter_commands.c.id)).first() is None
    assert stranger.get("/console/rooms/999999").status_code == 404
    assert web.anonymous().get(f"/console/rooms/{room}").status_code == 303


# -- operations ----------------------------------------------------------------------------------------------


def _commands(conn: Connection) -> list[Any]:
    return conn.execute(select(meter_commands).order_by(meter_commands.c.seq)).all()


def test_a_trip_from_the_room_page_is_confirmed_then_queued_once_and_audited_with_its_reason(web: Any) -> None:
    seeded = seed(web)
    room = seeded.rooms["101"]
    operator = _lang(web.client("operator", seeded.org_id), "en")
    key = str(uuid.uuid4())
    form = {"reason": "tenant asked: leaving for a month", "idempotency_key": key}
    path = f"/console/rooms/{room}/ops/trip"

    asked = operator.post(path, data=form, headers={"HX-Request": "true"})
    assert asked.status_code == 200 and "Please confirm" in asked.text and 'name="confirm" value="yes"' in asked.text
    assert "<html" not in asked.text, "an htmx request gets the panel alone"
    with web.engine.connect() as conn:
        assert _commands(conn) == [], "nothing happens before the confirmation"

    done = operator.post(path, data={**form, "confirm": "yes"}, headers={"HX-Request": "true"})
    assert done.status_code == 200, done.text
    assert "Done" in done.text and f"op:{key}:ORG1-M101" in done.text
    again = operator.post(path, data={**form, "confirm": "yes"}, headers={"HX-Request": "true"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"

    with web.engine.connect() as conn:
        rows = _commands(conn)
        records = audit_records(conn, subject="meter:ORG1-M101", action="trip")
    assert [(r.id, r.kind, r.state, r.reason) for r in rows] == [
        (f"op:{key}:ORG1-M101", "trip", "pending", "tenant asked: leaving for a month")
    ]
    assert rows[0].requested_by.startswith("user:operator") and rows[0].requested_by.endswith("@ORG1")
    assert [(r.actor, r.reason) for r in records] == [(rows[0].requested_by, "tenant asked: leaving for a month")]
    commands = operator.get(f"/console/rooms/{room}/commands")
    assert commands.status_code == 200 and "queued" in commands.text and 'data-refresh-s="3"' in commands.text


def test_an_operation_without_a_reason_is_refused_naming_the_field_and_nothing_is_queued(web: Any) -> None:
    seeded = seed(web)
    operator = _lang(web.client("operator", seeded.org_id), "en")
    answer = operator.post(
        f"/console/rooms/{seeded.rooms['101']}/ops/close",
        data={"reason": "  ", "confirm": "yes", "idempotency_key": str(uuid.uuid4())},
    )
    assert answer.status_code == 422 and "reason: required" in answer.text
    bad_until = operator.post(
        f"/console/rooms/{seeded.rooms['101']}/ops/temporary_supply",
        data={"reason": "repairs", "until": "2020-01-01T08:00", "idempotency_key": str(uuid.uuid4())},
    )
    assert bad_until.status_code == 422 and "until: must be in the future" in bad_until.text
    with web.engine.connect() as conn:
        assert _commands(conn) == []


def test_finance_recharges_and_refunds_at_the_cashier_from_the_room_page(web: Any) -> None:
    seeded = seed(web)
    room = seeded.rooms["201"]
    finance = _lang(web.client("finance", seeded.org_id), "en")
    form = {
        "amount": "50.00",
        "method": "cash",
        "receipt_no": "R-0001",
        "reason": "paid at the office",
        "idempotency_key": str(uuid.uuid4()),
        "confirm": "yes",
    }
    done = finance.post(f"/console/rooms/{room}/ops/recharge", data=form)
    assert done.status_code == 200 and "Credited ¥50.00" in done.text, done.text
    refund = {"amount": "12.50", "reason": "moved out early", "idempotency_key": str(uuid.uuid4()), "confirm": "yes"}
    refunded = finance.post(f"/console/rooms/{room}/ops/refund", data=refund)
    assert refunded.status_code == 200 and "Refunded ¥12.50" in refunded.text, refunded.text
    too_much = {**refund, "amount": "1000.00", "idempotency_key": str(uuid.uuid4())}
    refused = finance.post(f"/console/rooms/{room}/ops/refund", data=too_much)
    assert refused.status_code == 422 and "amount_fen" in refused.text
    with web.engine.connect() as conn:
        assert ledger_store.balance(conn, seeded.wallets["201"]).balance_micros == (5 + 50 - 12) * YUAN - 500_000
        actions = [(r.action, r.reason) for r in audit_records(conn, action="refund")]
    assert actions == [("refund", "moved out early")]


def test_an_admin_opens_a_pre_staged_account_and_sets_a_tariff(web: Any) -> None:
    seeded = seed(web)
    admin = _lang(web.client("admin", seeded.org_id), "en")
    staged = seeded.rooms["203"]
    opened = admin.post(
        f"/console/rooms/{staged}/ops/open_account",
        data={"reason": "keys handed over", "confirm": "yes", "idempotency_key": str(uuid.uuid4())},
    )
    assert opened.status_code == 200 and "Account opened: A-203" in opened.text
    tariff = admin.post(
        f"/console/rooms/{seeded.rooms['101']}/ops/set_tariff",
        data={"tariff_id": "tou-ORG1", "reason": "shop now", "confirm": "yes", "idempotency_key": str(uuid.uuid4())},
    )
    assert tariff.status_code == 200, tariff.text
    unknown = admin.post(
        f"/console/rooms/{seeded.rooms['101']}/ops/set_tariff",
        data={"tariff_id": "nope", "reason": "x", "idempotency_key": str(uuid.uuid4())},
    )
    assert unknown.status_code == 422 and "tariff_id: no tariff" in unknown.text
    with web.engine.connect() as conn:
        assert conn.execute(select(meters.c.tariff_id).where(meters.c.id == "ORG1-M101")).scalar_one() == "tou-ORG1"
        assert [r.detail for r in audit_records(conn, action="set_tariff")] == [{"from": "flat-ORG1", "to": "tou-ORG1"}]
        assert [r.reason for r in audit_records(conn, action="open_account") if r.reason == "keys handed over"]


# -- the grid ------------------------------------------------------------------------------------------------


def test_the_grid_shows_each_room_in_its_state_and_its_filters_narrow_it(web: Any) -> None:
    seeded = seed(web)
    viewer = _lang(web.client("viewer", seeded.org_id), "en")
    site = seeded.site_id
    whole = viewer.get(f"/console/monitor?site={site}").text
    assert _tile_states(whole) == {
        "101": "normal",
        "102": "offline",
        "103": "tripped",
        "201": "low",
        "202": "no_account",
        "203": "no_account",
        "204": "protect",
    }
    assert _tiles(viewer.get(f"/console/monitor?site={site}&state=low").text) == ["201"]
    assert _tiles(viewer.get(f"/console/monitor?site={site}&state=no_account").text) == ["202", "203"]
    assert _tiles(viewer.get(f"/console/monitor?site={site}&q=tenant 10").text) == ["101", "102", "103"]
    assert _tiles(viewer.get(f"/console/monitor?site={site}&q=ORG1-M204").text) == ["204"]
    floor2 = seeded.floors["2"]
    on_floor = viewer.get(f"/console/monitor?site={site}&building={seeded.building_id}&floor={floor2}").text
    assert _tiles(on_floor) == ["201", "202", "203", "204"]
    empty = viewer.get(f"/console/monitor?site={site}&building=&floor=&state=&q=").text
    assert len(_tiles(empty)) == 7, "empty filter fields mean 'all'"
    for bad in ("state=melted", "building=abc", "q=" + "x" * 65):
        answer = viewer.get(f"/console/monitor?site={site}&{bad}")
        assert answer.status_code == 422 and answer.json()["detail"].split(":")[0] in bad, bad


def test_the_refresh_partial_returns_only_the_grid(web: Any) -> None:
    seeded = seed(web)
    viewer = web.client("viewer", seeded.org_id)
    page = viewer.get(f"/console/monitor?site={seeded.site_id}&state=tripped").text
    partial_url = re.search(r'<section id="grid" class="grid-wrap" hx-get="([^"]+)"', page)
    assert partial_url is not None
    partial = viewer.get(partial_url.group(1).replace("&amp;", "&"))
    assert partial.status_code == 200
    text = partial.text.strip()
    assert text.startswith('<section id="grid"') and text.endswith("</section>")
    assert "<html" not in text and "<nav" not in text and "grid-filters" not in text
    assert _tiles(text) == ["103"]


@pytest.mark.parametrize("role", ["admin"])
def test_the_room_page_shows_the_account_forecast_meters_events_and_commands(web: Any, role: str) -> None:
    seeded = seed(web)
    page = _lang(web.client(role, seeded.org_id), "en").get(f"/console/rooms/{seeded.rooms['101']}").text
    for expected in (
        "A-101",
        "Tenant 101",
        "¥100.00",
        "days left",
        "ORG1-M101",
        "Flat 1 yuan",
        "Cover opened",
        "No commands yet.",
        'data-url="/console/rooms/',
    ):
        assert expected in page, expected
