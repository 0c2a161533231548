"""``powergate frame``: the field engineer's frame analyser for DL/T 645-2007 (and Modbus RTU/TCP).

    powergate frame decode HEX                      # spaces allowed: "FE FE 68 01 00 ... 16"
    powergate frame encode read --address 000000000001 --di 00010000
    powergate frame encode write --di 04001001 --value 50.00 [--password 000000 --password-level 2]
                                 [--operator 00000000]
    powergate frame encode relay --action trip|close-allowed|close-now|alarm|alarm-off|protect|protect-off
                                 --valid-until 2026-12-01T00:00
    powergate frame encode recharge --amount 100.00 --count 3 [--customer-number N] [--layout NAME]
    powergate frame encode read-address
    powergate frame encode broadcast-time --at 2026-11-22T10:00:00

``decode`` prints JSON: every field with its name, value and unit, and the data decoded by DI when the
registry knows it. When the bytes are not a DL/T 645 frame it asks ``powergate.protocols.modbus``'s
``describe_frame``. Exit code 1 when neither protocol accepts the bytes. ``encode`` prints the frame as
spaced hex; the address defaults to the wildcard AAAAAAAAAAAA, which the one meter on a point-to-point link
answers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from powergate.domain.money import parse_micros
from powergate.protocols.dlt645 import (
    RECHARGE_LAYOUTS,
    WILDCARD_ADDRESS,
    Credentials,
    DecodeError,
    Frame,
    Recharge,
    RelayAction,
    broadcast_time_request,
    decode_frame,
    describe,
    encode_frame,
    lookup,
    parse_address,
    parse_di,
    read_address_request,
    read_request,
    recharge_request,
    relay_command,
    write_request,
)

MAX_HEX_CHARS = 4096
RELAY_ACTIONS = {
    "trip": RelayAction.TRIP,
    "close-allowed": RelayAction.CLOSE_ALLOWED,
    "close-now": RelayAction.CLOSE_NOW,
    "alarm": RelayAction.ALARM,
    "alarm-off": RelayAction.ALARM_OFF,
    "protect": RelayAction.PROTECT,
    "protect-off": RelayAction.PROTECT_OFF,
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("frame", help="decode or encode DL/T 645-2007 frames (field engineer's tool)")
    commands = parser.add_subparsers(title="frame commands", metavar="COMMAND", required=True)
    decode = commands.add_parser("decode", help="print a DL/T 645 (or Modbus RTU/TCP) frame as JSON")
    decode.add_argument("hex", nargs="+", metavar="HEX", help="the frame's bytes in hex; spaces allowed")
    decode.set_defaults(handler=run_decode)

    encode = commands.add_parser("encode", help="print a DL/T 645 request frame as hex")
    kinds = encode.add_subparsers(title="frames", metavar="FRAME", required=True)
    _add_read(kinds)
    _add_write(kinds)
    _add_relay(kinds)
    _add_recharge(kinds)
    read_address = kinds.add_parser("read-address", help="13H: ask the one meter on the line for its address")
    _add_common(read_address, address=False)
    read_address.set_defaults(handler=_encoder(lambda args: read_address_request()))
    broadcast = kinds.add_parser("broadcast-time", help="08H: set every meter's clock (no reply)")
    broadcast.add_argument("--at", required=True, help="meter-local time, ISO 8601 (2026-11-22T10:00:00)")
    _add_common(broadcast, address=False)
    broadcast.set_defaults(handler=_encoder(lambda args: broadcast_time_request(_when(args.at, "at"))))


def _add_common(parser: argparse.ArgumentParser, *, address: bool = True, credentials: bool = False) -> None:
    if address:
        parser.add_argument("--address", default=WILDCARD_ADDRESS, help="12 digits (default AAAAAAAAAAAA)")
    parser.add_argument("--preamble", type=int, default=4, choices=range(5), help="FE wake-up bytes (default 4)")
    if credentials:
        parser.add_argument("--password", default="000000", help="6 hex digits (default 000000)")
        parser.add_argument("--password-level", type=int, default=2, help="password level PA (default 2)")
        parser.add_argument("--operator", default="00000000", help="operator code, 8 hex digits")


def _add_read(kinds: Any) -> None:
    read = kinds.add_parser("read", help="11H: read one data identifier")
    read.add_argument("--di", required=True, help="data identifier, 8 hex digits (00010000)")
    _add_common(read)
    read.set_defaults(handler=_encoder(lambda args: read_request(parse_address(args.address), parse_di(args.di))))


def _add_write(kinds: Any) -> None:
    write = kinds.add_parser("write", help="14H: write one data identifier (value in the meter's unit)")
    write.add_argument("--di", required=True, help="data identifier, 8 hex digits (04001001)")
    write.add_argument("--value", required=True, help="value as the meter shows it: 50.00, 2026-12-01, ...")
    _add_common(write, credentials=True)
    write.set_defaults(handler=_encoder(_write_frame))


def _write_frame(args: argparse.Namespace) -> Frame:
    di = parse_di(args.di)
    item = lookup(di)
    if item is None:
        raise ValueError(f"di: {args.di} is not in the registry, so its value format is unknown")
    if not item.writable:
        raise ValueError(f"di: {args.di} ({item.name}) is read-only")
    payload = item.format.encode(item.format.parse_text(args.value, "value"), "value")
    return write_request(parse_address(args.address), di, payload, _credentials(args))


def _add_relay(kinds: Any) -> None:
    relay = kinds.add_parser("relay", help="1CH: trip, close, alarm or power-protect")
    relay.add_argument("--action", required=True, choices=sorted(RELAY_ACTIONS))
    relay.add_argument("--valid-until", required=True, help="meter-local ISO time the command expires")
    _add_common(relay, credentials=True)
    relay.set_defaults(handler=_encoder(_relay_frame))


def _relay_frame(args: argparse.Namespace) -> Frame:
    until = _when(args.valid_until, "valid_until")
    return relay_command(parse_address(args.address), RELAY_ACTIONS[args.action], until, _credentials(args))


def _add_recharge(kinds: Any) -> None:
    recharge = kinds.add_parser("recharge", help="14H: prepaid recharge in the meter model's layout")
    recharge.add_argument("--amount", required=True, help="yuan, at most 2 decimals (100.00)")
    recharge.add_argument("--count", required=True, type=int, help="purchase count after this recharge")
    recharge.add_argument("--customer-number", default="000000000000", help="12 digits (layouts that carry it)")
    recharge.add_argument("--layout", default="plain-070102FF", choices=sorted(RECHARGE_LAYOUTS))
    _add_common(recharge, credentials=True)
    recharge.set_defaults(handler=_encoder(_recharge_frame))


def _recharge_frame(args: argparse.Namespace) -> Frame:
    recharge = Recharge(parse_micros(args.amount, field="amount", max_decimals=2), args.count, args.customer_number)
    layout = RECHARGE_LAYOUTS[args.layout]
    return recharge_request(parse_address(args.address), recharge, _credentials(args), layout)


def _credentials(args: argparse.Namespace) -> Credentials:
    return Credentials.parse(args.password_level, args.password, args.operator)


def _when(text: str, field: str) -> datetime:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=None)
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not an ISO 8601 time such as 2026-12-01T00:00") from None


def _encoder(build: Callable[[argparse.Namespace], Frame]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            frame = build(args)
        except ValueError as error:
            print(f"powergate frame encode: {error}", file=sys.stderr)
            return 2
        print(encode_frame(frame, args.preamble).hex(" ").upper())
        return 0

    return handler


def parse_hex(parts: list[str]) -> bytes | DecodeError:
    text = "".join(parts).replace(" ", "").replace(":", "").removeprefix("0x")
    if len(text) > MAX_HEX_CHARS:
        return DecodeError("hex", f"{len(text)} hex digits; the longest frame is far shorter ({MAX_HEX_CHARS})")
    try:
        return bytes.fromhex(text)
    except ValueError:
        return DecodeError("hex", f"{text[:40]!r} is not an even number of hex digits")


def decode_any(data: bytes) -> tuple[dict[str, object], bool]:
    """``(description, ok)``: DL/T 645 first, then Modbus if that decoder is installed."""
    frame = decode_frame(data)
    if not isinstance(frame, DecodeError):
        return describe(frame), True
    try:
        describe_modbus = importlib.import_module("powergate.protocols.modbus").describe_frame
    except (ImportError, AttributeError):
        return {"error": f"not a DL/T 645 frame: {frame}", "modbus": "no Modbus decoder installed"}, False
    try:
        return dict(describe_modbus(data)), True
    except ValueError as error:
        return {"error": "neither DL/T 645 nor Modbus", "dlt645": str(frame), "modbus": str(error)}, False


def run_decode(args: argparse.Namespace) -> int:
    data = parse_hex(args.hex)
    if isinstance(data, DecodeError):
        print(json.dumps({"error": str(data)}, ensure_ascii=False))
        return 1
    described, ok = decode_any(data)
    print(json.dumps(described, ensure_ascii=False, indent=2))
    return 0 if ok else 1
