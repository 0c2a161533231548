"""Alipay RSA2: signing strings, notification verification, answers' signatures, amounts; self-generated keys."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from functools import cache

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import given
from hypothesis import strategies as st

from powergate.payments import alipay as ali
from powergate.payments.base import OrderOpened, OrderRequest, Rejected, Verified
from powergate.payments.config import AlipayConfig
from powergate.payments.wechat import sign, signature_valid

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)


@cache
def key(name: str) -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def config() -> AlipayConfig:
    return AlipayConfig(
        app_id="2021000117600000",
        seller_id="2088102177800000",
        app_private_key=key("app"),
        alipay_public_key=key("alipay").public_key(),
        notify_url="https://pay.example.com/notify/alipay",
    )


def params(**changes: str) -> dict[str, str]:
    base = {
        "notify_time": "2026-11-22 10:59:59",
        "notify_type": "trade_status_sync",
        "notify_id": "ac05099524730693a8b330c5ecf72da9786",
        "charset": "utf-8",
        "version": "1.0",
        "sign_type": "RSA2",
        "app_id": "2021000117600000",
        "seller_id": "2088102177800000",
        "trade_no": "2026112222001490000000000001",
        "out_trade_no": "PG20261122030000ABCDEF0123",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "88.00",
        "subject": "电费充值 & 水费",
        "gmt_payment": "2026-11-22 10:59:58",
    }
    base.update(changes)
    return base


def signed_body(fields: dict[str, str], signer: str = "alipay") -> bytes:
    text = ali.signing_text(fields, drop=("sign", "sign_type"), skip_empty=False)
    return urllib.parse.urlencode({**fields, "sign": sign(key(signer), text)}).encode()


def test_the_signing_strings_follow_alipays_two_rules() -> None:
    fields = {"b": "2", "a": "1", "sign": "xyz", "sign_type": "RSA2", "c": ""}
    assert ali.signing_text(fields, drop=("sign", "sign_type"), skip_empty=False) == b"a=1&b=2&c="
    assert ali.signing_text(fields, drop=("sign",), skip_empty=True) == b"a=1&b=2&sign_type=RSA2"


def test_a_signed_notification_verifies_to_the_payment_it_carries() -> None:
    result = ali.Alipay(config()).verify_notification({}, signed_body(params()), NOW)
    assert result == Verified(
        order_no="PG20261122030000ABCDEF0123",
        provider_txn_id="2026112222001490000000000001",
        amount_fen=8800,
        paid_at=dt.datetime(2026, 11, 22, 2, 59, 58, tzinfo=dt.UTC),
        notification_id="ac05099524730693a8b330c5ecf72da9786",
    )


def test_a_finished_trade_is_a_payment_too() -> None:
    result = ali.Alipay(config()).verify_notification({}, signed_body(params(trade_status="TRADE_FINISHED")), NOW)
    assert isinstance(result, Verified)


REJECTIONS = [
    ("signed by another key", {}, "intruder", "sign does not verify"),
    ("another app", {"app_id": "2021000000000001"}, "alipay", "app_id"),
    ("another seller", {"seller_id": "2088000000000001"}, "alipay", "seller_id"),
    ("waiting for payment", {"trade_status": "WAIT_BUYER_PAY"}, "alipay", "trade_status"),
    ("closed trade", {"trade_status": "TRADE_CLOSED"}, "alipay", "trade_status"),
    ("three decimals", {"total_amount": "88.001"}, "alipay", "total_amount"),
    ("negative amount", {"total_amount": "-1.00"}, "alipay", "total_amount"),
    ("old capture", {"notify_time": "2026-11-19 10:59:59"}, "alipay", "notify_time"),
    ("from the future", {"notify_time": "2026-11-22 11:10:00"}, "alipay", "notify_time"),
    ("RSA1 signature type", {"sign_type": "RSA"}, "alipay", "sign_type"),
]


@pytest.mark.parametrize(("case", "changes", "signer", "words"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_a_notification_that_proves_nothing_is_rejected_naming_why(
    case: str, changes: dict[str, str], signer: str, words: str
) -> None:
    result = ali.Alipay(config()).verify_notification({}, signed_body(params(**changes), signer), NOW)
    assert isinstance(result, Rejected) and words in result.reason


def test_a_field_changed_after_signing_is_rejected() -> None:
    body = signed_body(params()).replace(b"total_amount=88.00", b"total_amount=0.01")
    result = ali.Alipay(config()).verify_notification({}, body, NOW)
    assert isinstance(result, Rejected) and "sign does not verify" in result.reason


@pytest.mark.parametrize("body", [b"\xff\xfe", b"a=1&a=2&sign_type=RSA2", b"x" * 70_000])
def test_a_body_that_is_not_one_clean_form_is_rejected(body: bytes) -> None:
    assert isinstance(ali.Alipay(config()).verify_notification({}, body, NOW), Rejected)


def test_the_answer_to_a_notification_is_exactly_success_only_when_handled() -> None:
    channel = ali.Alipay(config())
    assert channel.reply(True, "").body == b"success"
    assert channel.reply(False, "forged").body == b"failure"


@pytest.mark.parametrize(
    ("fen", "text"), [(1, "0.01"), (10, "0.10"), (100, "1.00"), (8800, "88.00"), (123_456_789, "1234567.89")]
)
def test_fen_are_written_as_yuan_with_two_decimals(fen: int, text: str) -> None:
    assert ali.yuan_text(fen) == text
    assert ali.parse_fen(text) == fen


@given(st.integers(min_value=1, max_value=10**10))
def test_amounts_round_trip_exactly(fen: int) -> None:
    assert ali.parse_fen(ali.yuan_text(fen)) == fen


@pytest.mark.parametrize("text", ["", "0", "0.00", "1.001", "abc", "1e2x", "NaN", "Infinity", None])
def test_an_amount_that_is_not_a_positive_number_of_fen_is_refused(text: str | None) -> None:
    assert ali.parse_fen(text) is None


def test_an_answers_signature_covers_the_exact_text_of_its_response_object() -> None:
    node = '{"code":"10000","msg":"Success","out_trade_no":"PG1","qr_code":"https://qr.alipay.com/bax0"}'
    raw = '{"alipay_trade_precreate_response":' + node + ',"sign":"' + sign(key("alipay"), node.encode()) + '"}'
    found = ali.signed_node(raw, "alipay_trade_precreate_response")
    assert found is not None
    text, value, signature = found
    assert text == node and value["qr_code"] == "https://qr.alipay.com/bax0"
    assert signature is not None and signature_valid(key("alipay").public_key(), text.encode(), signature)


def test_a_request_is_signed_over_its_sorted_parameters_including_sign_type() -> None:
    channel = ali.Alipay(config())
    fields = channel.request_parameters("alipay.trade.query", {"out_trade_no": "PG1"}, NOW)
    assert fields["timestamp"] == "2026-11-22 11:00:00"
    assert json.loads(fields["biz_content"]) == {"out_trade_no": "PG1"}
    text = ali.signing_text(fields, drop=("sign",), skip_empty=True)
    assert signature_valid(key("app").public_key(), text, fields["sign"])


def test_a_wap_order_is_a_signed_redirect_to_the_gateway() -> None:
    request = OrderRequest("PG1", 1234, "电费", NOW + dt.timedelta(minutes=15), "wap")
    opened = ali.Alipay(config()).create_order(request, NOW)
    assert isinstance(opened, OrderOpened)
    url = opened.pay_parameters["pay_url"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["method"] == "alipay.trade.wap.pay"
    biz = json.loads(query["biz_content"])
    assert biz["total_amount"] == "12.34" and biz["time_expire"] == "2026-11-22 11:15:00"
    assert signature_valid(
        key("app").public_key(), ali.signing_text(query, drop=("sign",), skip_empty=True), query["sign"]
    )
