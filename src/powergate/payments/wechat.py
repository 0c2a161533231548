"""WeChat Pay API v3: JSAPI and Native orders, notification verification and decryption, query, close, refund.

The protocol, as the official APIv3 rules describe it:
- Every request we send carries ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",
  signature="..",timestamp="..",serial_no=".."``; the signature is SHA256withRSA (PKCS#1 v1.5) with the
  merchant private key over ``METHOD\\nURL\\ntimestamp\\nnonce\\nbody\\n`` (URL = path and query).
- Every answer and every notification is signed by WeChat Pay the same way over ``timestamp\\nnonce\\nbody\\n``
  (the raw body bytes), with the platform key named by ``Wechatpay-Serial``. We verify answers too.
- A notification's ``resource`` is AEAD_AES_256_GCM ciphertext (base64) under the 32-byte APIv3 key, with
  ``resource.nonce`` and ``resource.associated_data``; the plaintext is the transaction JSON.

Invariants kept here: a notification is ``Verified`` only if the signature is valid for a configured serial,
the timestamp is within ``FRESHNESS_S`` of the injected ``now`` (a replay of an old capture is refused), the
resource decrypts (so it is authentic and untampered), the mchid and appid are ours and ``trade_state`` is
SUCCESS. Everything else is ``Rejected`` with the reason. Amounts are integer fen, as the API speaks them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
from collections.abc import Mapping
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from powergate.payments.base import (
    MAX_NOTIFICATION_BYTES,
    ChannelName,
    OrderOpened,
    OrderRequest,
    ProviderFailure,
    QueryResult,
    RefundAccepted,
    RefundOrder,
    RefundState,
    Rejected,
    Reply,
    TradeState,
    Verified,
    bounded,
    header,
)
from powergate.payments.config import WechatConfig

FRESHNESS_S = 300
"""A signed message older or newer than 5 minutes is refused (the official window)."""
SCHEMA = "WECHATPAY2-SHA256-RSA2048"
CHINA = dt.timezone(dt.timedelta(hours=8))
MAX_RESPONSE_BYTES = 256 * 1024
TRADE_STATES = {
    "SUCCESS": TradeState.PAID,
    "NOTPAY": TradeState.UNPAID,
    "USERPAYING": TradeState.UNPAID,
    "CLOSED": TradeState.CLOSED,
    "REVOKED": TradeState.CLOSED,
    "PAYERROR": TradeState.CLOSED,
    "REFUND": TradeState.REFUNDED,
}
REFUND_STATES = {
    "SUCCESS": RefundState.SUCCEEDED,
    "PROCESSING": RefundState.PROCESSING,
    "CLOSED": RefundState.FAILED,
    "ABNORMAL": RefundState.FAILED,
}


def sign(key: RSAPrivateKey, message: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5), base64: the one signature scheme of APIv3."""
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def signature_valid(key: RSAPublicKey, message: bytes, signature_b64: str) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{method}\n{url}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def response_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def authorization(config: WechatConfig, method: str, url: str, body: bytes, timestamp: str, nonce: str) -> str:
    """The ``Authorization`` header value for one request."""
    signature = sign(config.merchant_private_key, request_message(method, url, timestamp, nonce, body))
    return (
        f'{SCHEMA} mchid="{config.mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{config.merchant_serial}"'
    )


def parse_authorization(value: str) -> dict[str, str] | None:
    """The fields of an ``Authorization`` header (for the local fake and tests); ``None`` if malformed."""
    schema, _, rest = value.partition(" ")
    if schema != SCHEMA:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, eq, quoted = part.strip().partition("=")
        if not eq or len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
            return None
        fields[name] = quoted[1:-1]
    return fields


def check_signed(
    keys: Mapping[str, RSAPublicKey], headers: Mapping[str, str], body: bytes, now: dt.datetime
) -> str | None:
    """Why a WeChat Pay signed message (answer or notification) is not authentic and fresh; ``None`` if it is."""
    timestamp = header(headers, "Wechatpay-Timestamp")
    nonce = header(headers, "Wechatpay-Nonce")
    signature = header(headers, "Wechatpay-Signature")
    serial = header(headers, "Wechatpay-Serial")
    for name, value in (
        ("Wechatpay-Timestamp", timestamp),
        ("Wechatpay-Nonce", nonce),
        ("Wechatpay-Signature", signature),
        ("Wechatpay-Serial", serial),
    ):
        if not value:
            return f"header {name} is missing"
    assert timestamp and nonce and signature and serial
    if not timestamp.isdigit() or len(timestamp) > 12:
        return f"header Wechatpay-Timestamp {timestamp[:20]!r} is not a Unix time"
    skew_s = int(now.timestamp()) - int(timestamp)
    if abs(skew_s) > FRESHNESS_S:
        return f"header Wechatpay-Timestamp is {skew_s} s away from now; the window is +/-{FRESHNESS_S} s"
    key = keys.get(serial)
    if key is None:
        return f"header Wechatpay-Serial {serial[:64]!r} names no configured platform key"
    if not signature_valid(key, response_message(timestamp, nonce, body), signature):
        return "header Wechatpay-Signature does not verify with the platform key"
    return None


def decrypt_resource(apiv3_key: bytes, resource: Mapping[str, Any]) -> bytes | str:
    """The plaintext of an encrypted ``resource``, or the reason it cannot be had."""
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        return f"resource.algorithm {resource.get('algorithm')!r} is not AEAD_AES_256_GCM"
    nonce, ciphertext = resource.get("nonce"), resource.get("ciphertext")
    associated = resource.get("associated_data") or ""
    if not isinstance(nonce, str) or not isinstance(ciphertext, str) or not isinstance(associated, str):
        return "resource.nonce, resource.ciphertext and resource.associated_data must be text"
    try:
        data = base64.b64decode(ciphertext, validate=True)
        return AESGCM(apiv3_key).decrypt(nonce.encode(), data, associated.encode())
    except (binascii.Error, ValueError):
        return "resource.ciphertext is not base64 of a valid length"
    except InvalidTag:
        return "resource.ciphertext does not decrypt with the APIv3 key (forged or corrupted)"


def encrypt_resource(apiv3_key: bytes, plaintext: bytes, nonce: str, associated_data: str) -> dict[str, str]:
    """The inverse of ``decrypt_resource`` (what WeChat Pay does; used by the local fake and the sandbox)."""
    ciphertext = AESGCM(apiv3_key).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
        "nonce": nonce,
        "associated_data": associated_data,
        "original_type": "transaction",
    }


def rfc3339(moment: dt.datetime) -> str:
    """WeChat Pay's time format, in China time: ``2026-11-22T11:00:00+08:00``."""
    return moment.astimezone(CHINA).isoformat(timespec="seconds")


def parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.astimezone(dt.UTC) if moment.tzinfo is not None else None


class WechatPay:
    """The WeChat Pay v3 channel for one merchant (``mchid``) and one app (``appid``)."""

    def __init__(self, config: WechatConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        self._client = client or httpx.Client(timeout=config.timeout_s)

    @property
    def name(self) -> ChannelName:
        return ChannelName.WECHAT

    # --- notifications -----------------------------------------------------------------------------

    def verify_notification(self, headers: Mapping[str, str], body: bytes, now: dt.datetime) -> Verified | Rejected:
        if len(body) > MAX_NOTIFICATION_BYTES:
            return Rejected(f"body is {len(body)} bytes, more than {MAX_NOTIFICATION_BYTES}")
        claimed = _claimed_id(body)
        problem = check_signed(self.config.platform_keys, headers, body, now)
        if problem is not None:
            return Rejected(problem, claimed)
        try:
            envelope = json.loads(body)
        except ValueError:
            return Rejected("body is not JSON", claimed)
        if not isinstance(envelope, dict) or not isinstance(envelope.get("resource"), dict):
            return Rejected("body has no resource object", claimed)
        if envelope.get("event_type") != "TRANSACTION.SUCCESS":
            return Rejected(f"event_type {str(envelope.get('event_type'))[:40]!r} is not a payment", claimed)
        plaintext = decrypt_resource(self.config.apiv3_key, envelope["resource"])
        if isinstance(plaintext, str):
            return Rejected(plaintext, claimed)
        return self._transaction(plaintext, claimed)

    def _transaction(self, plaintext: bytes, claimed: str | None) -> Verified | Rejected:
        try:
            txn = json.loads(plaintext)
        except ValueError:
            return Rejected("resource plaintext is not JSON", claimed)
        if not isinstance(txn, dict):
            return Rejected("resource plaintext is not an object", claimed)
        order_no = bounded(txn.get("out_trade_no"), 64)
        if txn.get("mchid") != self.config.mchid:
            return Rejected(f"mchid {str(txn.get('mchid'))[:32]!r} is not ours", claimed, order_no)
        if txn.get("appid") != self.config.appid:
            return Rejected(f"appid {str(txn.get('appid'))[:32]!r} is not ours", claimed, order_no)
        if txn.get("trade_state") != "SUCCESS":
            return Rejected(f"trade_state {str(txn.get('trade_state'))[:20]!r} is not SUCCESS", claimed, order_no)
        paid = _paid(txn, claimed or "")
        return paid if isinstance(paid, Verified) else Rejected(paid, claimed, order_no)

    def reply(self, handled: bool, reason: str) -> Reply:
        """200 with no body when handled; otherwise 400 with ``{"code": "FAIL"}`` so WeChat Pay retries."""
        if handled:
            return Reply(200, "application/json", b"")
        body = json.dumps({"code": "FAIL", "message": reason[:200]}, ensure_ascii=False).encode()
        return Reply(400, "application/json", body)

    # --- calls to WeChat Pay -------------------------------------------------------------------------

    def create_order(self, request: OrderRequest, now: dt.datetime) -> OrderOpened | ProviderFailure:
        if request.method not in ("jsapi", "native"):
            return ProviderFailure(f"method {request.method!r}: WeChat Pay orders are jsapi or native", False)
        body: dict[str, Any] = {
            "appid": self.config.appid,
            "mchid": self.config.mchid,
            "description": request.description[:127] or request.order_no,
            "out_trade_no": request.order_no,
            "time_expire": rfc3339(request.expires_at),
            "notify_url": self.config.notify_url,
            "amount": {"total": request.amount_fen, "currency": "CNY"},
        }
        if request.method == "jsapi":
            if not request.payer_id:
                return ProviderFailure("payer_id: a JSAPI order needs the payer's openid", False)
            body["payer"] = {"openid": request.payer_id}
        answer = self._call("POST", f"/v3/pay/transactions/{request.method}", body, now)
        if isinstance(answer, ProviderFailure):
            return answer
        _, data = answer
        if request.method == "native":
            code_url = bounded(data.get("code_url"), 512)
            if code_url is None:
                return ProviderFailure("answer has no code_url")
            return OrderOpened(request.order_no, {"code_url": code_url})
        prepay_id = bounded(data.get("prepay_id"), 128)
        if prepay_id is None:
            return ProviderFailure("answer has no prepay_id")
        return OrderOpened(request.order_no, self.jsapi_parameters(prepay_id, now, secrets.token_hex(16)))

    def jsapi_parameters(self, prepay_id: str, now: dt.datetime, nonce: str) -> dict[str, str]:
        """What ``wx.requestPayment`` / ``WeixinJSBridge`` needs, signed with the merchant key."""
        timestamp = str(int(now.timestamp()))
        package = f"prepay_id={prepay_id}"
        message = f"{self.config.appid}\n{timestamp}\n{nonce}\n{package}\n".encode()
        return {
            "appId": self.config.appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": sign(self.config.merchant_private_key, message),
        }

    def query_order(self, order_no: str, now: dt.datetime) -> QueryResult | ProviderFailure:
        path = f"/v3/pay/transactions/out-trade-no/{order_no}?mchid={self.config.mchid}"
        answer = self._call("GET", path, None, now, not_found_ok=True)
        if isinstance(answer, ProviderFailure):
            return answer
        status, txn = answer
        if status == 404:
            return QueryResult(order_no, TradeState.UNKNOWN_ORDER)
        if txn.get("out_trade_no") != order_no or txn.get("mchid") != self.config.mchid:
            return ProviderFailure(f"answer is about order {str(txn.get('out_trade_no'))[:64]!r}, not {order_no!r}")
        state = TRADE_STATES.get(str(txn.get("trade_state")))
        if state is None:
            return ProviderFailure(f"answer has unknown trade_state {str(txn.get('trade_state'))[:20]!r}")
        if state is not TradeState.PAID:
            return QueryResult(order_no, state)
        paid = _paid(txn, f"query:{txn.get('transaction_id')}")
        if isinstance(paid, str):
            return ProviderFailure(paid)
        return QueryResult(order_no, state, paid.provider_txn_id, paid.amount_fen, paid.paid_at)

    def close_order(self, order_no: str, now: dt.datetime) -> ProviderFailure | None:
        answer = self._call(
            "POST", f"/v3/pay/transactions/out-trade-no/{order_no}/close", {"mchid": self.config.mchid}, now
        )
        return answer if isinstance(answer, ProviderFailure) else None

    def refund(self, request: RefundOrder, now: dt.datetime) -> RefundAccepted | ProviderFailure:
        body = {
            "out_trade_no": request.order_no,
            "out_refund_no": request.refund_no,
            "reason": request.reason[:80],
            "amount": {"refund": request.amount_fen, "total": request.order_amount_fen, "currency": "CNY"},
        }
        answer = self._call("POST", "/v3/refund/domestic/refunds", body, now)
        if isinstance(answer, ProviderFailure):
            return answer
        _, data = answer
        state = REFUND_STATES.get(str(data.get("status")))
        if state is None or data.get("out_refund_no") != request.refund_no:
            return ProviderFailure(f"refund answer has status {str(data.get('status'))[:20]!r} for another refund")
        return RefundAccepted(request.refund_no, state, bounded(data.get("refund_id"), 64), str(data.get("status")))

    def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None, now: dt.datetime, not_found_ok: bool = False
    ) -> tuple[int, dict[str, Any]] | ProviderFailure:
        """One signed request; the answer's signature is verified before its body is believed."""
        payload = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp, nonce = str(int(now.timestamp())), secrets.token_hex(16)
        headers = {
            "Authorization": authorization(self.config, method, path, payload, timestamp, nonce),
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        try:
            response = self._client.request(method, self.config.base_url + path, content=payload, headers=headers)
        except httpx.HTTPError as error:
            return ProviderFailure(f"{method} {path}: {type(error).__name__}: {error}")
        raw = response.content[:MAX_RESPONSE_BYTES]
        if response.status_code == 404 and not_found_ok:
            return 404, {}
        if response.status_code >= 300:
            return ProviderFailure(f"{method} {path}: HTTP {response.status_code}: {raw[:200]!r}")
        problem = check_signed(self.config.platform_keys, response.headers, raw, now)
        if problem is not None:
            return ProviderFailure(f"{method} {path}: answer not authentic: {problem}", retryable=False)
        if not raw:
            return response.status_code, {}
        try:
            data = json.loads(raw)
        except ValueError:
            return ProviderFailure(f"{method} {path}: answer is not JSON")
        return (response.status_code, data) if isinstance(data, dict) else ProviderFailure("answer is not an object")


def _claimed_id(body: bytes) -> str | None:
    try:
        envelope = json.loads(body)
    except ValueError:
        return None
    return bounded(envelope.get("id")) if isinstance(envelope, dict) else None


def _paid(txn: Mapping[str, Any], notification_id: str) -> Verified | str:
    """A successful transaction object as ``Verified``, or which field is wrong."""
    order_no = bounded(txn.get("out_trade_no"), 64)
    txn_id = bounded(txn.get("transaction_id"), 64)
    amount = txn.get("amount")
    total = amount.get("total") if isinstance(amount, dict) else None
    paid_at = parse_time(txn.get("success_time"))
    if order_no is None:
        return "out_trade_no is missing"
    if txn_id is None:
        return "transaction_id is missing"
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        return "amount.total is not a positive integer of fen"
    if isinstance(amount, dict) and amount.get("currency", "CNY") != "CNY":
        return f"amount.currency {str(amount.get('currency'))[:8]!r} is not CNY"
    if paid_at is None:
        return "success_time is not an RFC 3339 time"
    return Verified(order_no, txn_id, total, paid_at, notification_id or f"txn:{txn_id}")
