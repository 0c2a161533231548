"""WeChat Pay API v3: request signatures, notification verification and decryption, with self-generated keys."""

from __future__ import annotations

import base64
import datetime as dt
import json
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import given
from hypothesis import strategies as st

from powergate.payments import wechat as wx
from powergate.payments.base import Rejected, Verified
from powergate.payments.config import ConfigError, WechatConfig, load_payments_config

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
APIV3_KEY = b"0123456789abcdefghijABCDEFGHIJ01"
SERIAL = "PUB_KEY_ID_0114232134912410000000000000"


@cache
def key(name: str) -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def config() -> WechatConfig:
    return WechatConfig(
        mchid="1900000109",
        appid="wxd678efh567hg6787",
        merchant_serial="5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        merchant_private_key=key("merchant"),
        apiv3_key=APIV3_KEY,
        platform_keys={SERIAL: key("platform").public_key()},
        notify_url="https://pay.example.com/notify/wechat",
    )


def transaction(**changes: object) -> dict[str, object]:
    txn: dict[str, object] = {
        "mchid": "1900000109",
        "appid": "wxd678efh567hg6787",
        "out_trade_no": "PG20261122030000ABCDEF0123",
        "transaction_id": "4200001234202611220000000001",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "success_time": "2026-11-22T10:59:58+08:00",
        "amount": {"total": 5000, "payer_total": 5000, "currency": "CNY", "payer_currency": "CNY"},
    }
    txn.update(changes)
    return txn


def notification(
    txn: dict[str, object],
    *,
    at: dt.datetime = NOW,
    signer: str = "platform",
    serial: str = SERIAL,
    apiv3_key: bytes = APIV3_KEY,
    event_type: str = "TRANSACTION.SUCCESS",
) -> tuple[dict[str, str], bytes]:
    resource = wx.encrypt_resource(apiv3_key, json.dumps(txn).encode(), "fdasflkja484", "transaction")
    body = json.dumps(
        {
            "id": "EV-2018022511223320873",
            "create_time": "2026-11-22T11:00:00+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功",
            "resource": resource,
        },
        ensure_ascii=False,
    ).encode()
    timestamp, nonce = str(int(at.timestamp())), "fdasfjihihihlkja484w"
    signature = wx.sign(key(signer), wx.response_message(timestamp, nonce, body))
    headers = {
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": signature,
        "Wechatpay-Serial": serial,
    }
    return headers, body


def test_a_signed_and_encrypted_notification_verifies_to_the_payment_it_carries() -> None:
    headers, body = notification(transaction())
    result = wx.WechatPay(config()).verify_notification(headers, body, NOW)
    assert result == Verified(
        order_no="PG20261122030000ABCDEF0123",
        provider_txn_id="4200001234202611220000000001",
        amount_fen=5000,
        paid_at=dt.datetime(2026, 11, 22, 2, 59, 58, tzinfo=dt.UTC),
        notification_id="EV-2018022511223320873",
    )


@pytest.mark.parametrize(
    ("skew_s", "accepted"),
    [(-301, False), (-300, True), (0, True), (300, True), (301, False), (86_400, False)],
)
def test_the_freshness_window_is_five_minutes_either_side_of_now(skew_s: int, accepted: bool) -> None:
    headers, body = notification(transaction(), at=NOW + dt.timedelta(seconds=skew_s))
    result = wx.WechatPay(config()).verify_notification(headers, body, NOW)
    assert isinstance(result, Verified) is accepted
    if not accepted:
        assert isinstance(result, Rejected) and "Wechatpay-Timestamp" in result.reason


REJECTIONS = [
    ("signed by another key", {"signer": "intruder"}, {}, "Wechatpay-Signature"),
    ("unknown serial", {"serial": "PUB_KEY_ID_UNKNOWN"}, {}, "Wechatpay-Serial"),
    ("encrypted with another APIv3 key", {"apiv3_key": b"x" * 32}, {}, "does not decrypt"),
    ("another merchant", {}, {"mchid": "1900000999"}, "mchid"),
    ("another app", {}, {"appid": "wx0000000000000000"}, "appid"),
    ("not paid", {}, {"trade_state": "NOTPAY"}, "trade_state"),
    ("refund event", {"event_type": "REFUND.SUCCESS"}, {}, "event_type"),
    ("amount in yuan text", {}, {"amount": {"total": "50.00"}}, "amount.total"),
    ("no transaction id", {}, {"transaction_id": ""}, "transaction_id"),
]


@pytest.mark.parametrize(("case", "options", "changes", "words"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_a_notification_that_proves_nothing_is_rejected_naming_why(
    case: str, options: dict[str, object], changes: dict[str, object], words: str
) -> None:
    headers, body = notification(transaction(**changes), **options)  # type: ignore[arg-type]
    result = wx.WechatPay(config()).verify_notification(headers, body, NOW)
    assert isinstance(result, Rejected) and words in result.reason
    assert result.claimed_id == "EV-2018022511223320873"


def test_a_body_changed_after_signing_is_rejected() -> None:
    headers, body = notification(transaction())
    tampered = body.replace(b"TRANSACTION.SUCCESS", b"TRANSACTION.SUCCESs")
    result = wx.WechatPay(config()).verify_notification(headers, tampered, NOW)
    assert isinstance(result, Rejected) and "Wechatpay-Signature" in result.reason


@pytest.mark.parametrize(
    "missing", ["Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial"]
)
def test_a_notification_without_a_signature_header_is_rejected(missing: str) -> None:
    headers, body = notification(transaction())
    del headers[missing]
    result = wx.WechatPay(config()).verify_notification(headers, body, NOW)
    assert isinstance(result, Rejected) and missing in result.reason


def test_header_names_are_matched_regardless_of_case() -> None:
    headers, body = notification(transaction())
    lower = {name.lower(): value for name, value in headers.items()}
    assert isinstance(wx.WechatPay(config()).verify_notification(lower, body, NOW), Verified)


def test_the_request_signature_covers_method_url_timestamp_nonce_and_body() -> None:
    body = b'{"appid":"wxd678efh567hg6787"}'
    message = wx.request_message(
        "POST", "/v3/pay/transactions/native", "1554208460", "593BEC0C930BF1AFEB40B4A08C8FB242", body
    )
    assert message == (
        b"POST\n/v3/pay/transactions/native\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n"
        b'{"appid":"wxd678efh567hg6787"}\n'
    )
    value = wx.authorization(
        config(), "POST", "/v3/pay/transactions/native", body, "1554208460", "593BEC0C930BF1AFEB40B4A08C8FB242"
    )
    assert value.startswith('WECHATPAY2-SHA256-RSA2048 mchid="1900000109",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242"')
    fields = wx.parse_authorization(value)
    assert fields is not None and fields["serial_no"] == "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
    assert wx.signature_valid(key("merchant").public_key(), message, fields["signature"])
    assert not wx.signature_valid(key("merchant").public_key(), message + b"x", fields["signature"])


def test_jsapi_parameters_are_signed_over_appid_timestamp_nonce_and_package() -> None:
    params = wx.WechatPay(config()).jsapi_parameters(
        "wx201410272009395522657a690389285100", NOW, "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
    )
    assert params["package"] == "prepay_id=wx201410272009395522657a690389285100"
    assert params["timeStamp"] == str(int(NOW.timestamp()))
    message = f"wxd678efh567hg6787\n{params['timeStamp']}\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\n{params['package']}\n"
    assert wx.signature_valid(key("merchant").public_key(), message.encode(), params["paySign"])


@given(
    st.binary(max_size=2_000),
    st.text(alphabet="abcdefghijklmnop0123456789", min_size=12, max_size=12),
    st.text(max_size=15),
)
def test_resource_encryption_round_trips(plaintext: bytes, nonce: str, associated: str) -> None:
    resource = wx.encrypt_resource(APIV3_KEY, plaintext, nonce, associated)
    assert wx.decrypt_resource(APIV3_KEY, resource) == plaintext
    tampered = dict(resource, associated_data=associated + "x")
    assert isinstance(wx.decrypt_resource(APIV3_KEY, tampered), str)


def test_times_are_sent_in_china_time() -> None:
    assert wx.rfc3339(NOW) == "2026-11-22T11:00:00+08:00"
    assert wx.parse_time("2026-11-22T11:00:00+08:00") == NOW
    assert wx.parse_time("2026-11-22T11:00:00") is None


def _pem_files(tmp_path: Path) -> None:
    (tmp_path / "merchant.pem").write_bytes(
        key("merchant").private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "platform.pem").write_bytes(
        key("platform")
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "apiv3.key").write_bytes(APIV3_KEY + b"\n")


CONFIG = """
[wechat]
mchid = "1900000109"
appid = "wxd678efh567hg6787"
merchant_serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
merchant_private_key = "merchant.pem"
apiv3_key_file = "{apiv3}"
notify_url = "https://pay.example.com/notify/wechat"
[wechat.platform_keys]
"PUB_KEY_ID_0114232134912410000000000000" = "platform.pem"
"""


def test_keys_are_loaded_from_the_files_the_configuration_names(tmp_path: Path) -> None:
    _pem_files(tmp_path)
    (tmp_path / "payments.toml").write_text(CONFIG.format(apiv3="apiv3.key"))
    loaded = load_payments_config(tmp_path / "payments.toml")
    assert loaded.wechat is not None and loaded.alipay is None
    headers, body = notification(transaction())
    assert isinstance(wx.WechatPay(loaded.wechat).verify_notification(headers, body, NOW), Verified)


@pytest.mark.parametrize(
    ("apiv3", "content", "words"),
    [("missing.key", None, "apiv3_key_file: cannot read"), ("short.key", b"too-short", "32 bytes")],
)
def test_a_bad_key_file_is_a_configuration_error_naming_the_field(
    tmp_path: Path, apiv3: str, content: bytes | None, words: str
) -> None:
    _pem_files(tmp_path)
    if content is not None:
        (tmp_path / apiv3).write_bytes(content)
    (tmp_path / "payments.toml").write_text(CONFIG.format(apiv3=apiv3))
    with pytest.raises(ConfigError, match=words):
        load_payments_config(tmp_path / "payments.toml")


def test_a_private_key_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    _pem_files(tmp_path)
    (tmp_path / "merchant.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    (tmp_path / "payments.toml").write_text(CONFIG.format(apiv3="apiv3.key"))
    with pytest.raises(ConfigError, match="merchant_private_key"):
        load_payments_config(tmp_path / "payments.toml")


def test_signatures_are_base64_of_a_2048_bit_rsa_signature() -> None:
    assert len(base64.b64decode(wx.sign(key("merchant"), b"x"))) == 256
