"""Alipay (open platform, RSA2): precreate (QR) and WAP orders, asynchronous notifications, query, close, refund.

The protocol, as Alipay's open platform describes it:
- A request is a form of common parameters (``app_id``, ``method``, ``format``, ``charset``, ``sign_type``,
  ``timestamp`` in China time, ``version``, ``notify_url``) plus ``biz_content`` (JSON). The signature is
  SHA256withRSA with the app private key over every non-empty parameter except ``sign``, sorted by name and
  joined as ``k=v&k=v``.
- An answer is ``{"<method with _ for .>_response": {...}, "sign": "..."}``; the signature covers the exact
  text of the response object, which we cut out of the raw answer before parsing it.
- An asynchronous notification is a form POST. To verify it: remove ``sign`` and ``sign_type``, sort the rest
  by name, join ``k=v`` with ``&`` (values URL-decoded), and check SHA256withRSA with Alipay's public key.

Invariants kept here: a notification is ``Verified`` only when the signature is valid, ``app_id`` and
``seller_id`` are ours, ``trade_status`` is TRADE_SUCCESS or TRADE_FINISHED and the amount is an exact number
of fen. Matching the amount against the order is the service's job. The handler answers the text ``success``
only when the notification was handled (credited or already credited); anything else makes Alipay retry.
A ``notify_time`` more than 26 hours old (Alipay's retry window is 25) or 5 minutes ahead is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

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
)
from powergate.payments.config import AlipayConfig
from powergate.payments.wechat import sign, signature_valid

CHINA = dt.timezone(dt.timedelta(hours=8))
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_RESPONSE_BYTES = 256 * 1024
MAX_PARAMETERS = 100
PAID_STATUSES = ("TRADE_SUCCESS", "TRADE_FINISHED")
TRADE_STATES = {
    "WAIT_BUYER_PAY": TradeState.UNPAID,
    "TRADE_CLOSED": TradeState.CLOSED,
    "TRADE_SUCCESS": TradeState.PAID,
    "TRADE_FINISHED": TradeState.PAID,
}
TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
MAX_NOTIFICATION_AGE_S = 26 * 3600
"""Alipay retries a notification for 25 hours (2m, 10m, 10m, 1h, 2h, 6h, 15h); a ``notify_time`` older than
that (plus an hour of slack) is a replay of an old capture, not a retry."""
MAX_CLOCK_AHEAD_S = 300


def signing_text(parameters: Mapping[str, str], *, drop: tuple[str, ...], skip_empty: bool) -> bytes:
    """``k=v&k=v`` over the parameters sorted by name, without those in ``drop``."""
    items = sorted((k, v) for k, v in parameters.items() if k not in drop and (v != "" or not skip_empty))
    return "&".join(f"{k}={v}" for k, v in items).encode("utf-8")


def sign_request(parameters: Mapping[str, str], key: RSAPrivateKey) -> str:
    """The ``sign`` of a request: every non-empty parameter except ``sign`` (``sign_type`` included)."""
    return sign(key, signing_text(parameters, drop=("sign",), skip_empty=True))


def notification_signature_valid(parameters: Mapping[str, str], public_key: RSAPublicKey) -> bool:
    """Alipay's rule for asynchronous notifications: drop ``sign`` and ``sign_type``, sort, join, verify."""
    text = signing_text(parameters, drop=("sign", "sign_type"), skip_empty=False)
    return signature_valid(public_key, text, parameters.get("sign", ""))


def yuan_text(amount_fen: int) -> str:
    """Fen as Alipay's decimal yuan text: 1234 -> ``12.34``."""
    assert amount_fen >= 0
    return f"{amount_fen // 100}.{amount_fen % 100:02d}"


def parse_fen(text: object) -> int | None:
    """Alipay's decimal yuan text as fen, exactly; ``None`` if it is not a positive amount with <= 2 decimals."""
    if not isinstance(text, str) or not 0 < len(text) <= 16:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    fen = value * 100
    if not value.is_finite() or fen != fen.to_integral_value() or fen <= 0:
        return None
    return int(fen)


def parse_china_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or len(text) != 19:
        return None
    try:
        return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=CHINA).astimezone(dt.UTC)
    except ValueError:
        return None


def response_node(method: str) -> str:
    return method.replace(".", "_") + "_response"


def signed_node(raw: str, node: str) -> tuple[str, dict[str, Any], str | None] | None:
    """The exact text of ``node`` inside an answer, its parsed value, and the answer's ``sign``."""
    marker = f'"{node}"'
    start = raw.find(marker)
    if start < 0:
        return None
    index = start + len(marker)
    while index < len(raw) and raw[index] in " \t\r\n:":
        index += 1
    try:
        value, end = json.JSONDecoder().raw_decode(raw, index)
        whole = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(whole, dict):
        return None
    signature = whole.get("sign")
    return raw[index:end], value, signature if isinstance(signature, str) else None


class Alipay:
    """The Alipay channel for one app (``app_id``) selling as one seller (``seller_id``)."""

    def __init__(self, config: AlipayConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        self._client = client or httpx.Client(timeout=config.timeout_s)

    @property
    def name(self) -> ChannelName:
        return ChannelName.ALIPAY

    # --- notifications -----------------------------------------------------------------------------

    def verify_notification(self, headers: Mapping[str, str], body: bytes, now: dt.datetime) -> Verified | Rejected:
        if len(body) > MAX_NOTIFICATION_BYTES:
            return Rejected(f"body is {len(body)} bytes, more than {MAX_NOTIFICATION_BYTES}")
        try:
            pairs = urllib.parse.parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_PARAMETERS
            )
        except (UnicodeDecodeError, ValueError):
            return Rejected("body is not a UTF-8 form")
        params = dict(pairs)
        claimed = bounded(params.get("notify_id"))
        order_no = bounded(params.get("out_trade_no"), 64)
        if len(params) != len(pairs):
            return Rejected("a form field appears twice", claimed, order_no)
        if params.get("sign_type") != "RSA2":
            return Rejected(f"sign_type {params.get('sign_type', '')[:10]!r} is not RSA2", claimed, order_no)
        if not notification_signature_valid(params, self.config.alipay_public_key):
            return Rejected("sign does not verify with Alipay's public key", claimed, order_no)
        stale = _stale(params.get("notify_time"), now)
        if stale is not None:
            return Rejected(stale, claimed, order_no)
        return self._paid(params, claimed, order_no)

    def _paid(self, params: Mapping[str, str], claimed: str | None, order_no: str | None) -> Verified | Rejected:
        if params.get("app_id") != self.config.app_id:
            return Rejected(f"app_id {params.get('app_id', '')[:32]!r} is not ours", claimed, order_no)
        if params.get("seller_id") != self.config.seller_id:
            return Rejected(f"seller_id {params.get('seller_id', '')[:32]!r} is not ours", claimed, order_no)
        status = params.get("trade_status", "")
        if status not in PAID_STATUSES:
            return Rejected(f"trade_status {status[:20]!r} is not a payment", claimed, order_no)
        trade_no = bounded(params.get("trade_no"), 64)
        amount_fen = parse_fen(params.get("total_amount"))
        paid_at = parse_china_time(params.get("gmt_payment"))
        if order_no is None:
            return Rejected("out_trade_no is missing", claimed)
        if trade_no is None:
            return Rejected("trade_no is missing", claimed, order_no)
        if amount_fen is None:
            return Rejected(f"total_amount {params.get('total_amount', '')[:16]!r} is not yuan.fen", claimed, order_no)
        if paid_at is None:
            return Rejected("gmt_payment is not 'yyyy-MM-dd HH:mm:ss'", claimed, order_no)
        return Verified(order_no, trade_no, amount_fen, paid_at, claimed or f"trade:{trade_no}")

    def reply(self, handled: bool, reason: str) -> Reply:
        """Alipay stops retrying only when it reads exactly ``success``."""
        return Reply(200, "text/plain", b"success" if handled else b"failure")

    # --- calls to Alipay ---------------------------------------------------------------------------------

    def request_parameters(self, method: str, biz: Mapping[str, Any], now: dt.datetime) -> dict[str, str]:
        """The signed form of one request (also what a WAP payment page is redirected with)."""
        params = {
            "app_id": self.config.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": now.astimezone(CHINA).strftime(TIME_FORMAT),
            "version": "1.0",
            "notify_url": self.config.notify_url,
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        params["sign"] = sign_request(params, self.config.app_private_key)
        return params

    def create_order(self, request: OrderRequest, now: dt.datetime) -> OrderOpened | ProviderFailure:
        biz = {
            "out_trade_no": request.order_no,
            "total_amount": yuan_text(request.amount_fen),
            "subject": request.description[:256] or request.order_no,
            "time_expire": request.expires_at.astimezone(CHINA).strftime(TIME_FORMAT),
        }
        if request.method == "wap":
            params = self.request_parameters("alipay.trade.wap.pay", {**biz, "product_code": "QUICK_WAP_WAY"}, now)
            url = self.config.gateway_url + "?" + urllib.parse.urlencode(params)
            return OrderOpened(request.order_no, {"pay_url": url})
        if request.method != "precreate":
            return ProviderFailure(f"method {request.method!r}: Alipay orders are precreate or wap", False)
        answer = self._call("alipay.trade.precreate", biz, now)
        if isinstance(answer, ProviderFailure):
            return answer
        qr_code = bounded(answer.get("qr_code"), 512)
        if answer.get("code") != "10000" or qr_code is None:
            return ProviderFailure(_refusal(answer), retryable=False)
        return OrderOpened(request.order_no, {"qr_code": qr_code})

    def query_order(self, order_no: str, now: dt.datetime) -> QueryResult | ProviderFailure:
        answer = self._call("alipay.trade.query", {"out_trade_no": order_no}, now)
        if isinstance(answer, ProviderFailure):
            return answer
        if answer.get("sub_code") == TRADE_NOT_EXIST:
            return QueryResult(order_no, TradeState.UNKNOWN_ORDER)
        if answer.get("code") != "10000":
            return ProviderFailure(_refusal(answer))
        if answer.get("out_trade_no") != order_no:
            return ProviderFailure(f"answer is about order {str(answer.get('out_trade_no'))[:64]!r}, not {order_no!r}")
        state = TRADE_STATES.get(str(answer.get("trade_status")))
        if state is None:
            return ProviderFailure(f"answer has unknown trade_status {str(answer.get('trade_status'))[:20]!r}")
        if state is not TradeState.PAID:
            return QueryResult(order_no, state)
        trade_no = bounded(answer.get("trade_no"), 64)
        amount_fen = parse_fen(answer.get("total_amount"))
        paid_at = parse_china_time(answer.get("send_pay_date"))
        if trade_no is None or amount_fen is None or paid_at is None:
            return ProviderFailure("a paid trade's answer lacks trade_no, total_amount or send_pay_date")
        return QueryResult(order_no, state, trade_no, amount_fen, paid_at)

    def close_order(self, order_no: str, now: dt.datetime) -> ProviderFailure | None:
        answer = self._call("alipay.trade.close", {"out_trade_no": order_no}, now)
        if isinstance(answer, ProviderFailure):
            return answer
        # A QR order nobody scanned does not exist at Alipay yet: there is nothing to close.
        if answer.get("code") == "10000" or answer.get("sub_code") == TRADE_NOT_EXIST:
            return None
        return ProviderFailure(_refusal(answer))

    def refund(self, request: RefundOrder, now: dt.datetime) -> RefundAccepted | ProviderFailure:
        biz = {
            "out_trade_no": request.order_no,
            "refund_amount": yuan_text(request.amount_fen),
            "out_request_no": request.refund_no,
            "refund_reason": request.reason[:256],
        }
        answer = self._call("alipay.trade.refund", biz, now)
        if isinstance(answer, ProviderFailure):
            return answer
        if answer.get("code") != "10000":
            return RefundAccepted(request.refund_no, RefundState.FAILED, None, _refusal(answer))
        return RefundAccepted(request.refund_no, RefundState.SUCCEEDED, bounded(answer.get("trade_no"), 64))

    def _call(self, method: str, biz: Mapping[str, Any], now: dt.datetime) -> dict[str, Any] | ProviderFailure:
        """One signed request; the answer's signature is verified before its content is believed."""
        params = self.request_parameters(method, biz, now)
        try:
            response = self._client.post(self.config.gateway_url, data=params)
        except httpx.HTTPError as error:
            return ProviderFailure(f"{method}: {type(error).__name__}: {error}")
        if response.status_code != 200:
            return ProviderFailure(f"{method}: HTTP {response.status_code}")
        raw = response.content[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace")
        found = signed_node(raw, response_node(method))
        if found is None:
            return ProviderFailure(f"{method}: answer has no {response_node(method)} object")
        text, value, signature = found
        if signature is None or not signature_valid(self.config.alipay_public_key, text.encode(), signature):
            return ProviderFailure(f"{method}: answer's sign does not verify with Alipay's public key", False)
        return value


def _stale(notify_time: str | None, now: dt.datetime) -> str | None:
    sent_at = parse_china_time(notify_time)
    if sent_at is None:
        return "notify_time is not 'yyyy-MM-dd HH:mm:ss'"
    age_s = (now - sent_at).total_seconds()
    if not -MAX_CLOCK_AHEAD_S <= age_s <= MAX_NOTIFICATION_AGE_S:
        return (
            f"notify_time is {int(age_s)} s old; accepted: -{MAX_CLOCK_AHEAD_S}..{MAX_NOTIFICATION_AGE_S} s "
            "(Alipay's retry window)"
        )
    return None


def _refusal(answer: Mapping[str, Any]) -> str:
    return (
        f"Alipay refused: code {str(answer.get('code'))[:10]} {str(answer.get('msg'))[:60]}; "
        f"sub_code {str(answer.get('sub_code'))[:40]} {str(answer.get('sub_msg'))[:120]}"
    )
