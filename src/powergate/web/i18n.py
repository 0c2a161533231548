"""Languages of the user interface: zh-CN (the default) and English.

Each UI package owns a ``Catalog`` of its messages, every key in both languages (checked when the catalog is
built, so a missing translation fails at import, not in front of a user). ``language(request)`` picks the
language: the ``lang`` cookie (set by ``/lang/{code}``), then the browser's ``Accept-Language``, then zh-CN.
``format_money`` shows integer micros in the currency's minor unit by the one rounding rule of
``powergate.domain.money``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from fastapi import Request

from powergate.domain import money

LANGS = ("zh-CN", "en")
DEFAULT_LANG = "zh-CN"
LANG_COOKIE = "lang"
MAX_ACCEPT_LANGUAGE_ITEMS = 20


def normalise_lang(code: str | None) -> str | None:
    """``code`` as one of ``LANGS`` ("zh", "zh-cn", "zh-Hans-CN" -> "zh-CN"; "en-US" -> "en"), or None."""
    if not code:
        return None
    primary = code.strip().lower().split("-")[0].split("_")[0]
    if primary == "zh":
        return "zh-CN"
    if primary == "en":
        return "en"
    return None


def language(request: Request) -> str:
    """The request's language: cookie ``lang``, then ``Accept-Language`` (by q-value), default zh-CN."""
    from_cookie = normalise_lang(request.cookies.get(LANG_COOKIE))
    if from_cookie is not None:
        return from_cookie
    return _from_accept_language(request.headers.get("accept-language", "")) or DEFAULT_LANG


def _from_accept_language(header: str) -> str | None:
    choices: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")[:MAX_ACCEPT_LANGUAGE_ITEMS]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                continue
        lang = normalise_lang(tag)
        if lang is not None and quality > 0:
            choices.append((-quality, position, lang))
    return min(choices)[2] if choices else None


class Catalog:
    """Messages of one UI package: ``{"key": {"en": "...", "zh-CN": "..."}}``, every key in every language.

    ``gettext(lang)`` returns the lookup function templates call as ``_("key")``. An unknown key is a
    programmer error (``AssertionError``): a test that renders the page finds it.
    """

    def __init__(self, messages: Mapping[str, Mapping[str, str]]) -> None:
        checked: dict[str, Mapping[str, str]] = {}
        for key, texts in messages.items():
            missing = [lang for lang in LANGS if not texts.get(lang)]
            assert not missing, f"message {key!r} has no text in {', '.join(missing)}"
            extra = sorted(set(texts) - set(LANGS))
            assert not extra, f"message {key!r} has texts in unknown languages {extra}; known: {LANGS}"
            checked[key] = MappingProxyType(dict(texts))
        self._messages = MappingProxyType(checked)

    def __contains__(self, key: object) -> bool:
        return key in self._messages

    def keys(self) -> list[str]:
        return sorted(self._messages)

    def gettext(self, lang: str) -> Callable[[str], str]:
        assert lang in LANGS, f"unknown language {lang!r}; known: {LANGS}"
        messages = self._messages

        def lookup(key: str) -> str:
            texts = messages.get(key)
            assert texts is not None, f"no message {key!r} in the catalog"
            return texts[lang]

        return lookup

    def merged(self, other: Catalog) -> Catalog:
        """This catalog with ``other``'s messages added (a key in both is a programmer error)."""
        clash = sorted(set(self._messages) & set(other._messages))
        assert not clash, f"messages defined twice: {clash}"
        return Catalog({**self._messages, **other._messages})


def format_money(micros: int, lang: str, currency: str = "CNY") -> str:
    """``micros`` for display, e.g. ``format_money(12_345_000, "zh-CN") == "¥12.35"``.

    Rounded to the currency's minor unit half-up (``powergate.domain.money.ROUNDING_RULE``), with thousands
    separators and the sign before the symbol ("-¥1,234.50"). The format is the same in both languages (the
    yuan sign is what Chinese and English readers both expect for CNY).
    """
    assert isinstance(micros, int) and not isinstance(micros, bool), f"money must be integer micros, got {micros!r}"
    assert lang in LANGS, f"unknown language {lang!r}; known: {LANGS}"
    return money.format_money(micros, money.currency(currency))
