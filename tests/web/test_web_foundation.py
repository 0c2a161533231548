"""Units of the web foundation that need no database: settings from the environment, languages, catalogs,
money display, router discovery."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from fastapi import APIRouter
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from powergate.web.app import discover_routers
from powergate.web.i18n import Catalog, format_money, language
from powergate.web.settings import SettingsError, WebSettings, from_environ

GOOD_SECRET = "s" * 32


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})


# --- settings -------------------------------------------------------------------------------------------------


def test_settings_come_from_the_environment() -> None:
    settings = from_environ(
        {
            "POWERGATE_DATABASE_URL": "sqlite:///x.db",
            "POWERGATE_SECRET_KEY": GOOD_SECRET,
            "POWERGATE_COOKIE_SECURE": "true",
            "POWERGATE_MAX_BODY_BYTES": "2048",
        }
    )
    assert settings.database_url == "sqlite:///x.db"
    assert settings.cookie_secure is True and settings.demo is False and settings.max_body_bytes == 2048
    assert settings.clock().tzinfo is not None


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({}, "POWERGATE_SECRET_KEY is not set"),
        ({"POWERGATE_SECRET_KEY": "short"}, "POWERGATE_SECRET_KEY has 5 characters"),
        ({"POWERGATE_SECRET_KEY": GOOD_SECRET, "POWERGATE_DEMO": "maybe"}, "POWERGATE_DEMO must be"),
        ({"POWERGATE_SECRET_KEY": GOOD_SECRET, "POWERGATE_MAX_BODY_BYTES": "1e6"}, "POWERGATE_MAX_BODY_BYTES"),
    ],
)
def test_a_bad_setting_is_named(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        from_environ(environ)


def test_the_demo_runs_without_a_secret() -> None:
    settings = from_environ({"POWERGATE_DEMO": "1"})
    assert settings.demo and settings.secret_key


def test_settings_refuse_an_empty_secret() -> None:
    with pytest.raises(AssertionError, match="secret_key"):
        WebSettings(database_url="sqlite://", secret_key=" ")


# --- languages ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "zh-CN"),
        ({"Accept-Language": "en-GB,en;q=0.9"}, "en"),
        ({"Accept-Language": "fr-FR,en;q=0.5,zh-TW;q=0.8"}, "zh-CN"),
        ({"Accept-Language": "de, en;q=0.1"}, "en"),
        ({"Accept-Language": "en;q=0, zh;q=0"}, "zh-CN"),
        ({"Accept-Language": "en;q=bogus"}, "zh-CN"),
        ({"Accept-Language": "en", "Cookie": "lang=zh-CN"}, "zh-CN"),
        ({"Cookie": "lang=en"}, "en"),
        ({"Cookie": "lang=klingon", "Accept-Language": "en"}, "en"),
    ],
)
def test_the_language_is_the_cookie_then_the_browser_then_chinese(headers: dict[str, str], expected: str) -> None:
    assert language(_request(headers)) == expected


def test_a_catalog_needs_every_key_in_both_languages() -> None:
    catalog = Catalog({"save": {"zh-CN": "保存", "en": "Save"}})
    assert catalog.gettext("zh-CN")("save") == "保存"
    assert catalog.gettext("en")("save") == "Save"
    with pytest.raises(AssertionError, match="no message 'nope'"):
        catalog.gettext("en")("nope")
    with pytest.raises(AssertionError, match="has no text in en"):
        Catalog({"save": {"zh-CN": "保存"}})
    with pytest.raises(AssertionError, match="unknown languages"):
        Catalog({"save": {"zh-CN": "保存", "en": "Save", "fr": "Enregistrer"}})
    with pytest.raises(AssertionError, match="defined twice"):
        catalog.merged(Catalog({"save": {"zh-CN": "存", "en": "Keep"}}))


def test_money_is_shown_in_yuan_and_fen() -> None:
    assert format_money(12_345_000, "zh-CN") == "¥12.35"
    assert format_money(12_344_999, "en") == "¥12.34"
    assert format_money(-1_234_500_000, "en") == "-¥1,234.50"
    assert format_money(0, "zh-CN") == "¥0.00"
    assert format_money(5_000, "en") == "¥0.01", "half a fen rounds up (ROUND_HALF_UP)"
    assert format_money(1_000_000, "en", "USD") == "$1.00"
    with pytest.raises(AssertionError, match="integer micros"):
        format_money(1.5, "en")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown currency"):
        format_money(1, "en", "XXX")


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_money_display_is_the_half_up_rounding_of_the_exact_amount(micros: int) -> None:
    text = format_money(micros, "zh-CN")
    shown = Decimal(text.replace("¥", "").replace(",", ""))
    exact = (Decimal(micros) / 1_000_000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert shown == exact
    assert text.startswith("-¥") == (exact < 0)


# --- router discovery -----------------------------------------------------------------------------------------


def test_routers_are_discovered_by_module_skipping_private_ones(tmp_path: object) -> None:
    import sys
    from pathlib import Path

    root = Path(str(tmp_path)) / "probe_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "things.py").write_text("from fastapi import APIRouter\nrouter = APIRouter(prefix='/things')\n")
    (root / "_helpers.py").write_text("raise RuntimeError('private modules are never imported')\n")
    (root / "plain.py").write_text("router = 'not a router'\n")
    sys.path.insert(0, str(root.parent))
    try:
        import probe_pkg  # type: ignore[import-not-found]

        found = discover_routers(probe_pkg)
    finally:
        sys.path.remove(str(root.parent))
        for name in [m for m in sys.modules if m.startswith("probe_pkg")]:
            del sys.modules[name]
    assert [(name, type(router)) for name, router in found] == [("probe_pkg.things", APIRouter)]
