"""Local fakes of the WeChat Pay v3 and Alipay HTTP APIs, with self-generated keys.

Each fake is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 with a random port. It verifies OUR request
signatures exactly as the provider would (merchant / app public key) and records every request it could not
verify in ``bad_requests`` (tests assert it stays empty). It signs its answers with the provider's key, keeps
the orders it was told about, and produces notifications the way the provider does (``notification``).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from powergate.payments import alipay as ali
from powergate.payments import wechat as wx
from powergate.payments.config import AlipayConfig, WechatConfig

MCHID = "1900000109"
APPID = "wxd678efh567hg6787"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
PLATFORM_SERIAL = "PUB_KEY_ID_0114232134912410000000000000"
APIV3_KEY = b"0123456789abcdefghijABCDEFGHIJ01"
ALI_APP_ID = "2021000117600000"
ALI_SELLER_ID = "2088102177800000"
CHINA = dt.timezone(dt.timedelta(hours=8))


@cache
def key(name: str) -> RSAPrivateKey:
    """A 2048-bit RSA key per role, generated once per test session (never a real key)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def wechat_config(base_url: str = "http://127.0.0.1:9") -> WechatConfig:
    return WechatConfig(
        mchid=MCHID,
        appid=APPID,
        merchant_serial=MERCHANT_SERIAL,
        merchant_private_key=key("merchant"),
        apiv3_key=APIV3_KEY,
        platform_keys={PLATFORM_SERIAL: key("platform").public_key()},
        notify_url="https://pay.example.com/notify/wechat",
        base_url=base_url,
        timeout_s=5.0,
    )


def alipay_config(gateway_url: str = "http://127.0.0.1:9/gateway.do") -> AlipayConfig:
    return AlipayConfig(
        app_id=ALI_APP_ID,
        seller_id=ALI_SELLER_ID,
        app_private_key=key("alipay-app"),
        alipay_public_key=key("alipay").public_key(),
        notify_url="https://pay.example.com/notify/alipay",
        gateway_url=gateway_url,
        timeout_s=5.0,
    )


# --- notifications as the providers make them -------------------------------------------------------------


def wechat_notification(
    transaction: dict[str, Any],
    now: dt.datetime,
    *,
    signing_key: RSAPrivateKey | None = None,
    apiv3_key: bytes = APIV3_KEY,
    serial: str = PLATFORM_SERIAL,
    notification_id: str | None = None,
) -> tuple[dict[str, str], bytes]:
    resource = wx.encrypt_resource(apiv3_key, json.dumps(transaction).encode(), secrets.token_hex(6), "transaction")
    envelope = {
        "id": notification_id or f"EV-{secrets.token_hex(10)}",
        "create_time": wx.rfc3339(now),
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": resource,
    }
    body = json.dumps(envelope, ensure_ascii=False).encode()
    return wechat_signed_headers(body, now, signing_key, serial), body


def wechat_signed_headers(
    body: bytes, now: dt.datetime, signing_key: RSAPrivateKey | None = None, serial: str = PLATFORM_SERIAL
) -> dict[str, str]:
    timestamp, nonce = str(int(now.timestamp())), secrets.token_hex(16)
    signature = wx.sign(signing_key or key("platform"), wx.response_message(timestamp, nonce, body))
    return {
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": signature,
        "Wechatpay-Serial": serial,
    }


def wechat_transaction(order_no: str, amount_fen: int, txn_id: str, paid_at: dt.datetime) -> dict[str, Any]:
    return {
        "mchid": MCHID,
        "appid": APPID,
        "out_trade_no": order_no,
        "transaction_id": txn_id,
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "success_time": wx.rfc3339(paid_at),
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": amount_fen, "payer_total": amount_fen, "currency": "CNY", "payer_currency": "CNY"},
    }


def alipay_notification(
    order_no: str,
    amount_fen: int,
    trade_no: str,
    paid_at: dt.datetime,
    *,
    signing_key: RSAPrivateKey | None = None,
    overrides: dict[str, str] | None = None,
    sent_at: dt.datetime | None = None,
) -> bytes:
    params = {
        "notify_time": (sent_at or paid_at).astimezone(CHINA).strftime(ali.TIME_FORMAT),
        "notify_type": "trade_status_sync",
        "notify_id": f"ac05099524730693a8b330c5ecf72da{secrets.token_hex(4)}",
        "charset": "utf-8",
        "version": "1.0",
        "sign_type": "RSA2",
        "app_id": ALI_APP_ID,
        "seller_id": ALI_SELLER_ID,
        "buyer_id": "2088102122524333",
        "trade_no": trade_no,
        "out_trade_no": order_no,
        "trade_status": "TRADE_SUCCESS",
        "total_amount": ali.yuan_text(amount_fen),
        "receipt_amount": ali.yuan_text(amount_fen),
        "subject": "电费充值",
        "gmt_create": paid_at.astimezone(CHINA).strftime(ali.TIME_FORMAT),
        "gmt_payment": paid_at.astimezone(CHINA).strftime(ali.TIME_FORMAT),
        **(overrides or {}),
    }
    text = ali.signing_text(params, drop=("sign", "sign_type"), skip_empty=False)
    params["sign"] = wx.sign(signing_key or key("alipay"), text)
    return urllib.parse.urlencode(params).encode()


# --- the fake servers ---------------------------------------------------------------------------------------


@dataclass
class FakeTrade:
    amount_fen: int
    state: str = "NOTPAY"
    txn_id: str | None = None
    paid_at: dt.datetime | None = None
    refunded_fen: int = 0


@dataclass
class FakeProvider:
    """State shared by a fake's request handlers; ``now`` is the fake's clock (set by the test)."""

    now: dt.datetime
    trades: dict[str, FakeTrade] = field(default_factory=dict)
    bad_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    refund_status: str = "SUCCESS"
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def pay(self, order_no: str, paid_at: dt.datetime) -> FakeTrade:
        """The payer pays at the provider (the fake's side of a real payment)."""
        with self.lock:
            trade = self.trades[order_no]
            trade.state, trade.txn_id, trade.paid_at = "SUCCESS", f"4200{secrets.token_hex(10)}", paid_at
            return trade


class _Handler(BaseHTTPRequestHandler):
    provider: FakeProvider

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class WechatHandler(_Handler):
    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        body = self._body()
        provider = self.provider
        provider.requests.append(f"{method} {self.path}")
        problem = self._check_authorization(method, body)
        if problem:
            provider.bad_requests.append(f"{method} {self.path}: {problem}")
            return self._answer(401, {"code": "SIGN_ERROR", "message": problem})
        status, answer = self._route(method, self.path, json.loads(body) if body else {})
        self._answer(status, answer)

    def _check_authorization(self, method: str, body: bytes) -> str | None:
        fields = wx.parse_authorization(self.headers.get("Authorization", ""))
        if fields is None:
            return "Authorization is not WECHATPAY2-SHA256-RSA2048"
        if fields.get("mchid") != MCHID or fields.get("serial_no") != MERCHANT_SERIAL:
            return "wrong mchid or serial_no"
        if abs(int(fields["timestamp"]) - int(self.provider.now.timestamp())) > 300:
            return "stale timestamp"
        message = wx.request_message(method, self.path, fields["timestamp"], fields["nonce_str"], body)
        if not wx.signature_valid(key("merchant").public_key(), message, fields["signature"]):
            return "signature does not verify with the merchant certificate"
        return None

    def _route(self, method: str, path: str, data: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        provider = self.provider
        parts = urllib.parse.urlsplit(path)
        with provider.lock:
            if method == "POST" and parts.path in ("/v3/pay/transactions/native", "/v3/pay/transactions/jsapi"):
                provider.trades[data["out_trade_no"]] = FakeTrade(int(data["amount"]["total"]))
                if parts.path.endswith("native"):
                    return 200, {"code_url": f"weixin://wxpay/bizpayurl?pr={secrets.token_hex(4)}"}
                return 200, {"prepay_id": f"wx{secrets.token_hex(14)}"}
            if parts.path.startswith("/v3/pay/transactions/out-trade-no/"):
                order_no = parts.path.split("/")[5]
                trade = provider.trades.get(order_no)
                if trade is None:
                    return 404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"}
                if path.endswith("/close"):
                    trade.state = "CLOSED" if trade.state == "NOTPAY" else trade.state
                    return 204, None
                return 200, self._transaction(order_no, trade)
            if method == "POST" and parts.path == "/v3/refund/domestic/refunds":
                trade = provider.trades[data["out_trade_no"]]
                amount = int(data["amount"]["refund"])
                if trade.state != "SUCCESS" or trade.refunded_fen + amount > trade.amount_fen:
                    return 400, {"code": "INVALID_REQUEST", "message": "退款金额超过订单金额"}
                if provider.refund_status != "ABNORMAL":
                    trade.refunded_fen += amount
                status = provider.refund_status
                return 200, {
                    "refund_id": f"50{secrets.token_hex(8)}",
                    "out_refund_no": data["out_refund_no"],
                    "status": status,
                }
        return 404, {"code": "NOT_FOUND", "message": path}

    def _transaction(self, order_no: str, trade: FakeTrade) -> dict[str, Any]:
        answer: dict[str, Any] = {"mchid": MCHID, "appid": APPID, "out_trade_no": order_no, "trade_state": trade.state}
        if trade.txn_id is not None:
            assert trade.paid_at is not None
            answer = wechat_transaction(order_no, trade.amount_fen, trade.txn_id, trade.paid_at)
        return answer

    def _answer(self, status: int, data: dict[str, Any] | None) -> None:
        body = b"" if data is None else json.dumps(data, ensure_ascii=False).encode()
        headers = wechat_signed_headers(body, self.provider.now)
        headers["Content-Type"] = "application/json"
        self._send(status, body, headers)


class AlipayHandler(_Handler):
    def do_POST(self) -> None:
        provider = self.provider
        params = dict(urllib.parse.parse_qsl(self._body().decode(), keep_blank_values=True))
        method = params.get("method", "")
        provider.requests.append(method)
        problem = self._check_signature(params)
        if problem:
            provider.bad_requests.append(f"{method}: {problem}")
            return self._answer(
                method, {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature"}
            )
        with provider.lock:
            answer = self._route(method, json.loads(params["biz_content"]))
        self._answer(method, answer)

    def _check_signature(self, params: dict[str, str]) -> str | None:
        if params.get("app_id") != ALI_APP_ID or params.get("sign_type") != "RSA2":
            return "wrong app_id or sign_type"
        text = ali.signing_text(params, drop=("sign",), skip_empty=True)
        if not wx.signature_valid(key("alipay-app").public_key(), text, params.get("sign", "")):
            return "sign does not verify with the app public key"
        return None

    def _route(self, method: str, biz: dict[str, Any]) -> dict[str, Any]:
        provider = self.provider
        order_no = biz.get("out_trade_no", "")
        trade = provider.trades.get(order_no)
        missing = {
            "code": "40004",
            "msg": "Business Failed",
            "sub_code": "ACQ.TRADE_NOT_EXIST",
            "sub_msg": "交易不存在",
        }
        if method == "alipay.trade.precreate":
            provider.trades[order_no] = FakeTrade(ali.parse_fen(biz["total_amount"]) or 0, "WAIT_BUYER_PAY")
            return {
                "code": "10000",
                "msg": "Success",
                "out_trade_no": order_no,
                "qr_code": "https://qr.alipay.com/bax0",
            }
        if trade is None:
            return missing
        if method == "alipay.trade.query":
            answer = {"code": "10000", "msg": "Success", "out_trade_no": order_no, "trade_status": trade.state}
            answer["trade_status"] = "TRADE_SUCCESS" if trade.state == "SUCCESS" else trade.state
            if trade.txn_id is not None and trade.paid_at is not None:
                answer |= {
                    "trade_no": trade.txn_id,
                    "total_amount": ali.yuan_text(trade.amount_fen),
                    "send_pay_date": trade.paid_at.astimezone(CHINA).strftime(ali.TIME_FORMAT),
                }
            return answer
        if method == "alipay.trade.close":
            trade.state = "TRADE_CLOSED"
            return {"code": "10000", "msg": "Success", "out_trade_no": order_no}
        if method == "alipay.trade.refund":
            amount = ali.parse_fen(biz["refund_amount"]) or 0
            if trade.state != "SUCCESS" or trade.refunded_fen + amount > trade.amount_fen:
                return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"}
            trade.refunded_fen += amount
            return {"code": "10000", "msg": "Success", "trade_no": trade.txn_id, "fund_change": "Y"}
        return {"code": "40004", "msg": "Business Failed", "sub_code": "isv.invalid-method"}

    def _answer(self, method: str, node: dict[str, Any]) -> None:
        node_text = json.dumps(node, ensure_ascii=False)
        signature = wx.sign(key("alipay"), node_text.encode())
        body = f'{{"{ali.response_node(method)}":{node_text},"sign":"{signature}"}}'.encode()
        self._send(200, body, {"Content-Type": "application/json;charset=utf-8"})


@contextmanager
def serve(handler: type[_Handler], now: dt.datetime) -> Iterator[FakeProvider]:
    provider = FakeProvider(now)
    bound = type("BoundHandler", (handler,), {"provider": provider})
    server = ThreadingHTTPServer(("127.0.0.1", 0), bound)
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
