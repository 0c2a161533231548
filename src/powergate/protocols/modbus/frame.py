"""Modbus RTU frames and Modbus TCP ADUs: build them, check them, and describe them for a field engineer.

Layouts (all multi-byte fields big-endian except the RTU CRC, which goes low byte first)::

    RTU:  [unit id 1][function 1][data N][CRC16 2]                 N <= 252, whole frame <= 256 bytes
    TCP:  [transaction 2][protocol id 2 = 0][length 2][unit id 1][function 1][data N]
          length = 1 (unit id) + 1 (function) + N,                  whole ADU <= 260 bytes

    PDU data by function (request | reply):
      01/02 read bits       address 2, count 2     | byte count 1, bits packed LSB first
      03/04 read registers  address 2, count 2     | byte count 1, words
      05 write coil         address 2, FF00 / 0000 | echo
      06 write register     address 2, word        | echo
      0F write coils        address 2, count 2, byte count 1, bits | address 2, count 2
      10 write registers    address 2, count 2, byte count 1, words | address 2, count 2
      exception reply       function | 0x80, exception code 1

``describe_frame`` never guesses silently: an RTU frame with a good CRC wins, then a TCP ADU whose header
length matches exactly, then an RTU frame whose body is consistent but whose CRC is bad (reported with
``crc_ok: false``); anything else raises ``ValueError`` saying why it is not Modbus. The CRC-16/MODBUS
(polynomial 0xA001 reflected, initial value 0xFFFF) is computed here, in a few lines, with a table.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable

from powergate.protocols.modbus.codec import WriteRequest
from powergate.protocols.modbus.registers import MAX_READ_BITS, MAX_READ_REGISTERS, Table

MAX_RTU_FRAME = 256
MAX_TCP_ADU = 260
MBAP_LENGTH = 7

FUNCTION_NAMES = {
    0x01: "read coils",
    0x02: "read discrete inputs",
    0x03: "read holding registers",
    0x04: "read input registers",
    0x05: "write single coil",
    0x06: "write single register",
    0x0F: "write multiple coils",
    0x10: "write multiple registers",
}
EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data``; on the wire it goes low byte first: ``crc16(d).to_bytes(2, "little")``."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def rtu_frame(unit_id: int, pdu: bytes) -> bytes:
    """An RTU frame: unit id, PDU, CRC."""
    assert 0 <= unit_id <= 255 and 1 <= len(pdu) <= MAX_RTU_FRAME - 3
    body = bytes([unit_id]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def tcp_frame(transaction: int, unit_id: int, pdu: bytes) -> bytes:
    """A Modbus TCP ADU: MBAP header (transaction, protocol 0, length, unit id) then the PDU."""
    assert 0 <= transaction <= 0xFFFF and 0 <= unit_id <= 255 and 1 <= len(pdu) <= MAX_TCP_ADU - MBAP_LENGTH
    header = transaction.to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big")
    return header + bytes([unit_id]) + pdu


def read_request_pdu(table: Table, address: int, count: int) -> bytes:
    """The PDU reading ``count`` words (bits) of ``table`` from ``address``."""
    assert 0 <= address <= 0xFFFF and 1 <= count <= table.max_read and address + count <= 0x10000
    return bytes([table.read_function]) + address.to_bytes(2, "big") + count.to_bytes(2, "big")


def _pack_bits(bits: tuple[int, ...]) -> bytes:
    packed = bytearray((len(bits) + 7) // 8)
    for index, bit in enumerate(bits):
        if bit:
            packed[index // 8] |= 1 << (index % 8)
    return bytes(packed)


def write_request_pdu(request: WriteRequest) -> bytes:
    """The PDU of a write built by ``codec.encode_write``."""
    function = request.function
    address = request.address.to_bytes(2, "big")
    count = len(request.words)
    if function == 0x05:
        return bytes([function]) + address + (b"\xff\x00" if request.words[0] else b"\x00\x00")
    payload = _pack_bits(request.words) if function == 0x0F else b"".join(w.to_bytes(2, "big") for w in request.words)
    return bytes([function]) + address + count.to_bytes(2, "big") + bytes([len(payload)]) + payload


# --- describing ----------------------------------------------------------------------------------------

Fields = dict[str, object]


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "big")


def _unpack_bits(data: bytes, count: int) -> list[bool]:
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)]


def _words(data: bytes) -> list[int]:
    return [_u16(data, i) for i in range(0, len(data), 2)]


def _read_request(function: int, body: bytes) -> Fields | None:
    limit = MAX_READ_BITS if function in (0x01, 0x02) else MAX_READ_REGISTERS
    if len(body) != 4 or not 1 <= _u16(body, 2) <= limit:
        return None
    return {"direction": "request", "address": _u16(body, 0), "count": _u16(body, 2)}


def _read_reply(function: int, body: bytes) -> Fields | None:
    if not body or body[0] != len(body) - 1:
        return None
    data = body[1:]
    if function in (0x01, 0x02):
        return {"direction": "reply", "byte_count": body[0], "values": _unpack_bits(data, 8 * len(data))}
    if len(data) % 2 or not data:
        return None
    return {"direction": "reply", "byte_count": body[0], "count": len(data) // 2, "values": _words(data)}


def _single_write(function: int, body: bytes) -> Fields | None:
    if len(body) != 4:
        return None
    value = _u16(body, 2)
    if function == 0x05 and value not in (0xFF00, 0x0000):
        return None
    fields: Fields = {"direction": "request or echo reply", "address": _u16(body, 0), "count": 1}
    fields["values"] = [value == 0xFF00] if function == 0x05 else [value]
    return fields


def _multi_write_request(function: int, body: bytes) -> Fields | None:
    if len(body) < 6 or body[4] != len(body) - 5:
        return None
    count, data = _u16(body, 2), body[5:]
    expected = (count + 7) // 8 if function == 0x0F else 2 * count
    if count == 0 or len(data) != expected:
        return None
    values: list[bool] | list[int] = _unpack_bits(data, count) if function == 0x0F else _words(data)
    return {
        "direction": "request",
        "address": _u16(body, 0),
        "count": count,
        "byte_count": body[4],
        "values": values,
    }


def _multi_write_reply(_function: int, body: bytes) -> Fields | None:
    if len(body) != 4:
        return None
    return {"direction": "reply", "address": _u16(body, 0), "count": _u16(body, 2)}


_Parser = Callable[[int, bytes], "Fields | None"]
_PARSERS: dict[int, tuple[_Parser, ...]] = {
    0x01: (_read_request, _read_reply),
    0x02: (_read_request, _read_reply),
    0x03: (_read_request, _read_reply),
    0x04: (_read_request, _read_reply),
    0x05: (_single_write,),
    0x06: (_single_write,),
    0x0F: (_multi_write_request, _multi_write_reply),
    0x10: (_multi_write_request, _multi_write_reply),
}


def describe_pdu(pdu: bytes) -> Fields | None:
    """Named fields of a PDU (function code + data), or ``None`` when its body fits no known layout.

    A read of bits whose reply carries 3 data bytes is the same length as its request; the request reading
    wins and ``ambiguous`` is set.
    """
    if not pdu:
        return None
    function, body = pdu[0], pdu[1:]
    fields: Fields = {"function": function}
    if function & 0x80:
        base = function & 0x7F
        if len(body) != 1 or base not in FUNCTION_NAMES:
            return None
        code = body[0]
        fields.update(function_name=FUNCTION_NAMES[base], direction="reply", exception=True, exception_code=code)
        fields["exception_name"] = EXCEPTION_NAMES.get(code, "unknown exception")
        return fields
    parsers = _PARSERS.get(function)
    if parsers is None:
        return None
    readings = [r for r in (parser(function, body) for parser in parsers) if r is not None]
    if not readings:
        return None
    fields.update(function_name=FUNCTION_NAMES[function], exception=False, **readings[0])
    if len(readings) > 1:
        fields["ambiguous"] = True
    return fields


def _describe_rtu(data: bytes) -> Fields | None:
    if len(data) < 4:
        return None
    body, crc_wire = data[:-2], data[-2:]
    pdu_fields = describe_pdu(body[1:])
    if pdu_fields is None:
        return None
    expected = crc16(body).to_bytes(2, "little")
    fields: Fields = {"protocol": "modbus-rtu", "unit_id": body[0], **pdu_fields}
    fields.update(crc=crc_wire.hex().upper(), crc_expected=expected.hex().upper(), crc_ok=crc_wire == expected)
    return fields


def _describe_tcp(data: bytes) -> Fields | None:
    if len(data) < MBAP_LENGTH + 1 or _u16(data, 2) != 0 or _u16(data, 4) != len(data) - 6:
        return None
    pdu_fields = describe_pdu(data[MBAP_LENGTH:])
    if pdu_fields is None:
        return None
    header: Fields = {"protocol": "modbus-tcp", "transaction": _u16(data, 0), "protocol_id": 0}
    return {**header, "length": _u16(data, 4), "unit_id": data[6], **pdu_fields}


def describe_frame(data: bytes) -> dict[str, object]:
    """Named fields of a Modbus RTU frame or Modbus TCP ADU; ``ValueError`` saying why when it is neither.

    Keys: ``protocol`` (``modbus-rtu`` / ``modbus-tcp``), ``transaction``, ``protocol_id`` and ``length``
    (TCP), ``unit_id``, ``function``, ``function_name``, ``direction``, ``exception``, then as the function
    has them ``address``, ``count``, ``byte_count``, ``values``, ``exception_code``, ``exception_name``,
    and for RTU ``crc``, ``crc_expected`` (wire order, hex) and ``crc_ok``. Every value is JSON-ready.
    """
    if not isinstance(data, bytes | bytearray):
        raise ValueError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 4:
        raise ValueError(f"not a Modbus frame: {len(data)} bytes is shorter than the shortest frame (4)")
    if len(data) > MAX_TCP_ADU:
        raise ValueError(f"not a Modbus frame: {len(data)} bytes exceeds the largest ADU ({MAX_TCP_ADU})")
    rtu = _describe_rtu(data) if len(data) <= MAX_RTU_FRAME else None
    if rtu is not None and rtu["crc_ok"]:
        return rtu
    tcp = _describe_tcp(data)
    if tcp is not None:
        return tcp
    if rtu is not None:
        return rtu
    raise ValueError(
        "not a Modbus frame: no RTU layout fits (unit id, known function, consistent lengths, CRC) and no "
        "TCP MBAP header fits (protocol id 0, length field = bytes after it)"
    )
