"""The operations console in a real headless Chromium against a running demo (issue #8 acceptance).

One demo server for the module (``demo_server``, at ``DEMO_SPEED`` unless POWERGATE_BROWSER_DEMO_SPEED says
otherwise): staff login and logout, the monitoring grid (state colours, filters, live refresh), a trip from a
room page with its reason and confirm step until the command is verified, a tariff edit (a field error, then a
saved version), and the monthly report downloaded as Excel and checked with openpyxl. Each test saves
screenshots of the pages it visits under test-artifacts/screenshots/ (console-*.png).

Waits are for states with deadlines (Playwright's ``expect`` or ``browserkit.poll_until``), never fixed sleeps.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
from browserkit import login_console, shoot, wait_for_charts
from playwright.sync_api import Page, expect

DEMO_SPEED = 60
"""Nothing here waits for demo time to pass; the default pace keeps the machine quiet."""

STATES = ("no_account", "offline", "tripped", "protect", "low", "normal")
TRIP_ROOM = "B-0110"
"""A shop on DL/T 645 through a DTU, funded with hundreds of yuan: nothing but the operator trips it."""
CURVE_ROOM = "C-0105"
"""A dormitory room with a 4G (MQTT) meter, which pushes instantaneous values: its room page draws curves."""


def money(text: str) -> Decimal:
    """'¥99,394.00' / '-¥1.67' -> Decimal."""
    cleaned = text.strip().replace(",", "").replace("¥", "")
    assert re.fullmatch(r"-?\d+(\.\d+)?", cleaned), f"not an amount: {text!r}"
    return Decimal(cleaned)


def grid_snapshot(page: Page) -> dict[str, Any]:
    """Chip counts, tiles and colours read in one script run, so that a live refresh cannot split the reading."""
    return page.evaluate(
        """() => {
          const grid = document.getElementById('grid');
          const colour = (el) => getComputedStyle(el).backgroundColor;
          const chips = {}, dots = {};
          grid.querySelectorAll('.legend a.chip').forEach((chip) => {
            const state = [...chip.classList].find((c) => c.startsWith('s-')).slice(2);
            chips[state] = parseInt(chip.querySelector('strong').textContent, 10);
            dots[state] = colour(chip.querySelector('.dot'));
          });
          const tiles = [...grid.querySelectorAll('a.tile')].map((tile) => ({
            state: [...tile.classList].find((c) => c.startsWith('s-')).slice(2),
            number: tile.querySelector('b') ? tile.querySelector('b').textContent.trim() : tile.textContent.trim(),
            colour: colour(tile),
          }));
          const rooms = grid.querySelector('.legend strong').textContent;
          return {chips, dots, tiles, rooms: parseInt(rooms, 10)};
        }"""
    )


def test_a_wrong_password_shows_the_error_and_staff_log_in_and_out(
    demo_server: Any, page: Page, screenshot: Callable[[str], Path]
) -> None:
    base = demo_server.base_url
    page.goto(f"{base}/console/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    viewer = demo_server.login("viewer")
    page.fill("#organisation", viewer.organisation)
    page.fill("#username", viewer.username)
    page.fill("#password", "not-the-password")
    page.locator("main.login form button[type=submit]").click()
    expect(page.locator("main.login .error[role=alert]")).to_have_text("机构代码、用户名或密码不正确。")
    expect(page.locator("#username")).to_have_value("viewer")  # the form keeps what was typed, not the password
    expect(page.locator("#password")).to_have_value("")

    login_console(page, demo_server, "admin")
    expect(page.locator("h1")).to_have_text("仪表盘")
    expect(page.locator("header .user summary")).to_contain_text("admin")
    cards = page.locator("main .card .value")
    expect(cards.first).to_have_text(re.compile(r"^\d+$"))
    shoot(page, screenshot("console-dashboard"))

    page.locator("header details.menu summary").click()
    page.locator("header details.menu form[action='/logout'] button").click()
    expect(page).to_have_url(re.compile(r"/login\?logged_out=1$"))
    expect(page.locator("main.login .notice[role=status]")).to_have_text("您已退出登录。")
    page.goto(f"{base}/console/")
    expect(page).to_have_url(re.compile(r"/login\?next="))  # the session is gone


def test_the_monitoring_grid_shows_state_colours_and_the_filters_narrow_it(
    demo_server: Any, page: Page, screenshot: Callable[[str], Path]
) -> None:
    base = demo_server.base_url
    login_console(page, demo_server, "viewer")
    page.goto(f"{base}/console/monitor")
    expect(page.locator("#grid a.tile")).to_have_count(210)
    expect(page.locator("#live-status")).to_have_text("实时：每 5 秒刷新")
    # Until the head-end has read both of A-0102's meters once, the room shows offline (grey) rather than
    # power-protect (purple): the grid refreshes itself until it does.
    expect(page.locator("#grid a.tile.s-protect", has_text="A-0102")).to_have_count(1)

    seen = grid_snapshot(page)
    assert seen["rooms"] == 210 == len(seen["tiles"])
    assert sum(seen["chips"].values()) == 210, seen["chips"]
    by_state: dict[str, set[str]] = {}
    for tile in seen["tiles"]:
        by_state.setdefault(tile["state"], set()).add(tile["colour"])
    assert {state: len([t for t in seen["tiles"] if t["state"] == state]) for state in by_state} == {
        state: count for state, count in seen["chips"].items() if count
    }, "each chip counts the tiles of its state"
    for state, colours in by_state.items():
        assert colours == {seen["dots"][state]}, (
            f"{state} tiles are painted {colours}, the legend {seen['dots'][state]}"
        )
    assert len(set(seen["dots"].values())) == len(STATES), f"one colour per state: {seen['dots']}"
    assert {"normal", "protect"} <= set(by_state), "A-0102 is power-protected, most rooms are normal"
    assert len(by_state) >= 3, f"the demo shows several states at once: {sorted(by_state)}"
    shoot(page, screenshot("console-monitor"))

    page.locator("#grid a.tile", has_text=CURVE_ROOM).click()  # a tile opens its room
    page.wait_for_url("**/console/rooms/*")
    expect(page.locator("h1")).to_contain_text(CURVE_ROOM)
    wait_for_charts(page, "#chart-power", "#chart-voltage", "#chart-current")
    points = page.evaluate("() => Chart.getChart(document.getElementById('chart-power')).data.datasets[0].data.length")
    assert points >= 1, "the 4G meter pushes power, voltage and current with each reading"
    shoot(page, screenshot("console-room-curves"))
    page.goto(f"{base}/console/monitor")

    page.select_option("select[name=building]", label="D栋 办公 Offices")  # auto-submits
    page.wait_for_url(re.compile(r"building=\d+"))
    tiles = page.locator("#grid a.tile")
    expect(tiles).to_have_count(24)
    assert all(text.startswith("D-") for text in tiles.all_inner_texts())
    expect(page.locator("select[name=floor]")).to_be_enabled()
    page.select_option("select[name=floor]", label="2F")
    page.wait_for_url(re.compile(r"floor=\d+"))
    expect(tiles).to_have_count(6)
    assert all(text.startswith("D-02") for text in tiles.all_inner_texts())

    page.goto(f"{base}/console/monitor")
    page.fill("input[name=q]", "A-0102")
    page.locator("#grid-filters button[type=submit]").click()
    page.wait_for_url(re.compile(r"q=A-0102"))
    expect(tiles).to_have_count(1)
    expect(tiles.first).to_have_class(re.compile(r"\bs-protect\b"))
    page.locator("a.chip.s-normal").click()  # a state chip filters by that state (and keeps the search)
    page.wait_for_url(re.compile(r"state=normal"))
    expect(page.locator("#grid .empty")).to_be_visible()
    expect(tiles).to_have_count(0)


def test_a_trip_from_the_room_page_is_verified_and_the_open_grid_turns_the_tile_tripped_live(
    demo_server: Any, page: Page, screenshot: Callable[[str], Path]
) -> None:
    base = demo_server.base_url
    login_console(page, demo_server, "operator")
    grid = page
    grid.goto(f"{base}/console/monitor?q={TRIP_ROOM}")
    tile = grid.locator("#grid a.tile")
    expect(tile).to_have_count(1)
    expect(tile).to_have_class(re.compile(r"\bs-(normal|low)\b"))
    grid.evaluate("() => { window.__notReloaded = true; }")
    updated_before = grid.locator("#grid .updated").inner_text()

    room = page.context.new_page()  # same session, second tab
    room.goto(f"{base}{tile.get_attribute('href')}")
    expect(room.locator("h1")).to_contain_text(TRIP_ROOM)
    commands = room.locator("#commands tbody tr")
    before = commands.count()

    trip = room.locator("form.op[data-op=trip]")
    trip.locator("input[name=reason]").fill("browser test: electrical inspection of the shop")
    trip.locator("button[type=submit]").click()
    confirm = room.locator("#op-panel form.confirm")
    expect(confirm).to_be_visible()
    expect(confirm.locator("dl")).to_contain_text(f"{TRIP_ROOM}-E")
    expect(confirm.locator("dl")).to_contain_text("browser test: electrical inspection of the shop")
    assert commands.count() == before, "the first step only validates: nothing is queued before the confirm"

    confirm.locator("button[type=submit]").click()
    done = room.locator("#op-panel .panel.ok")
    expect(done).to_be_visible()
    expect(done.locator("code")).to_have_text(re.compile(rf"^op:[0-9a-f-]+:{TRIP_ROOM}-E$"))
    newest = room.locator("#commands tbody tr").first
    expect(newest.locator(".cmd")).to_have_class(re.compile(r"\bc-verified\b"), timeout=60_000)
    expect(newest).to_contain_text("分闸")
    expect(newest).to_contain_text("user:operator@DEMO")
    expect(newest).to_contain_text("relay open")

    expect(tile).to_have_class(re.compile(r"\bs-tripped\b"), timeout=30_000)  # the grid tab refreshed itself
    assert grid.evaluate("() => window.__notReloaded === true"), "the grid page was reloaded"
    assert grid.locator("#grid .updated").inner_text() != updated_before
    expect(grid.locator("a.chip.s-tripped strong")).not_to_have_text("0")
    grid.goto(f"{base}/console/monitor")
    expect(grid.locator("#grid a.tile.s-tripped", has_text=TRIP_ROOM)).to_have_count(1)
    shoot(grid, screenshot("console-monitor-after-trip"))

    room.goto(room.url)  # a fresh load at the top of the page (a reload keeps the scroll position)
    expect(room.locator("h1 .badge")).to_have_class(re.compile(r"\bs-tripped\b"))
    expect(room.locator(".cards .card", has_text="供电")).to_contain_text("已断电")
    expect(room.locator("main table.data tbody tr", has_text=f"{TRIP_ROOM}-E").first).to_contain_text("分闸")
    room.wait_for_load_state("networkidle")
    shoot(room, screenshot("console-room"))
    shoot(room, screenshot("console-room-full"), full_page=True)


def test_a_tariff_edit_shows_the_field_error_then_saves_and_lists_the_new_version(
    demo_server: Any, page: Page, screenshot: Callable[[str], Path]
) -> None:
    base = demo_server.base_url
    login_console(page, demo_server, "finance")

    page.goto(f"{base}/console/tariffs/shop-tou")
    bar = page.locator("figure.b-daybar").first
    expect(bar).to_be_visible()
    bands = set(bar.locator("svg rect").evaluate_all("(rects) => rects.map((r) => r.getAttribute('class'))"))
    assert {"b-band-peak", "b-band-valley"} <= bands, bands
    widths = bar.locator("svg rect").evaluate_all("(rects) => rects.map((r) => +r.getAttribute('width'))")
    assert sum(widths) == 1440, "the day bar covers the 24 hours exactly"
    bar.scroll_into_view_if_needed()
    shoot(page, screenshot("console-tariff-tou"))

    page.goto(f"{base}/console/tariffs/office-flat")
    expect(page.locator("section.b-version")).to_have_count(1)
    page.locator("a.button[href$='/versions/new']").click()
    page.wait_for_url("**/console/tariffs/office-flat/versions/new")
    expect(page.locator("input[name=pricing][value=flat]")).to_be_checked()
    starts = (dt.date.today() + dt.timedelta(days=45)).replace(day=1)
    page.fill("input[name=effective_from]", starts.isoformat())
    page.fill("input[name=price]", "1.2.5")
    page.fill("input[name=reason]", "browser test: new office price")
    page.locator("form.b-form button[name=intent][value=save]").click()

    expect(page.locator(".panel.error[role=alert]")).to_be_visible()
    expect(page.locator("input[name=price]")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#err-price li").first).to_contain_text("1.2.5")
    expect(page.locator("input[name=effective_from]")).not_to_have_attribute("aria-invalid", "true")
    page.goto(f"{base}/console/tariffs/office-flat")
    expect(page.locator("section.b-version")).to_have_count(1)  # nothing half-saved

    page.goto(f"{base}/console/tariffs/office-flat/versions/new")
    page.fill("input[name=effective_from]", starts.isoformat())
    page.fill("input[name=price]", "1.3500")
    page.fill("input[name=reason]", "browser test: new office price")
    page.locator("form.b-form button[name=intent][value=save]").click()

    page.wait_for_url(re.compile(r"/console/tariffs/office-flat(\?|$|#)"))
    expect(page.locator(".panel.ok[role=status]")).to_contain_text("#2")
    expect(page.locator("section.b-version")).to_have_count(2)
    newest = page.locator("section.b-version").first
    expect(newest.locator("h3")).to_contain_text(f"#2 · 生效时间 {starts.isoformat()} 00:00")
    expect(newest.locator("dl")).to_contain_text("1.35")
    page.goto(f"{base}/console/tariffs")
    row = page.locator("table.data tbody tr", has_text="office-flat")
    expect(row.locator("td").nth(3)).to_have_text("2")


def test_the_monthly_report_downloads_as_excel_with_its_header_and_exact_totals(
    demo_server: Any, page: Page, screenshot: Callable[[str], Path], tmp_path: Path
) -> None:
    base = demo_server.base_url
    login_console(page, demo_server, "finance")

    page.goto(f"{base}/console/finance")
    wait_for_charts(page, "#b-income-chart", "#b-channel-chart")
    shoot(page, screenshot("console-finance"))
    # The month of the demo's funding payments (the demo clock may have passed a month end since).
    page.goto(f"{base}/console/finance?account=A-0103&state=paid")
    paid_at = page.locator("table.data tbody tr").first.locator("td").nth(8).inner_text()
    month = re.match(r"\d{4}-\d{2}", paid_at)
    assert month, f"paid at {paid_at!r}"

    page.goto(f"{base}/console/reports")
    shoot(page, screenshot("console-reports"))
    monthly = page.locator("form[action='/console/reports/monthly']")
    monthly.locator("select[name=site]").select_option(label="滨江产业园 Riverside Park")
    monthly.locator("input[name=month]").fill(month.group())
    with page.expect_download() as info:
        monthly.locator("button[name=format][value=xlsx]").click()
    download = info.value
    assert download.suggested_filename.endswith(f"-{month.group()}.xlsx"), download.suggested_filename
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)

    monthly.locator("button[name=format][value=html]").click()
    page.wait_for_url("**/console/reports/monthly?**")
    footer = page.locator("table.b-report tfoot th")
    expect(footer.first).to_have_text("合计 (210)")
    html_recharges = money(footer.nth(2).inner_text())

    book = openpyxl.load_workbook(saved, read_only=True)
    rows = [list(row) for row in book.active.iter_rows(values_only=True)]
    book.close()
    assert rows[1][:2] == ["月份", month.group()]
    header_at = next(i for i, row in enumerate(rows) if row and row[0] == "户号")
    header = rows[header_at]
    for title in ("户名", "期初余额 (元)", "充值 (元)", "扣费 (元)", "期末余额 (元)"):
        assert title in header, f"{title!r} not in {header}"
    body, total = rows[header_at + 1 : -1], rows[-1]
    assert total[0] == "合计" and len(body) == 210

    def column(row: list[Any], title: str) -> Decimal:
        value = row[header.index(title)]
        return Decimal(str(value or 0))

    for title in (
        "期初余额 (元)",
        "充值 (元)",
        "扣费 (元)",
        "其他费用 (元)",
        "退费 (元)",
        "调整 (元)",
        "期末余额 (元)",
    ):
        assert column(total, title) == sum((column(row, title) for row in body), Decimal(0)), title
    recharges = column(total, "充值 (元)")
    assert recharges == html_recharges, "the workbook and the page show the same month"
    assert recharges > 210 * 10, "every demo account was funded with at least the minimum purchase"
    for row in [*body, total]:
        expected = (
            column(row, "期初余额 (元)")
            + column(row, "充值 (元)")
            - column(row, "扣费 (元)")
            - column(row, "其他费用 (元)")
            - column(row, "退费 (元)")
            + column(row, "调整 (元)")
        )
        assert column(row, "期末余额 (元)") == expected, f"{row[0]}: closing != opening + in - out"
