"""Modbus RTU / TCP frames: CRC and framing agree with pymodbus and manuals; describe_frame explains them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu import bit_message as bits
from pymodbus.pdu import register_message as regs

from powergate.protocols.modbus import (
    ACREL_SINGLE_PHASE,
    GENERIC_THREE_PHASE,
    CodecError,
    Table,
    crc16,
    describe_frame,
    encode_group,
    encode_write,
    read_request_pdu,
    rtu_frame,
    tcp_frame,
    write_request_pdu,
)

RTU = FramerRTU(DecodePDU(False))
SOCKET = FramerSocket(DecodePDU(False))
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocols" / "modbus.md"


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"123456789", 0x4B37),  # the CRC-16/MODBUS check value
        (bytes.fromhex("110309000006"), 0xC4C4),  # AcuRev 1312 manual, read 6 registers from 0900H
        (bytes.fromhex("11030C0000007F000000640000001B"), 0x8D96),  # its reply: 1.27, 1.00, 0.27 kWh
        (b"", 0xFFFF),
    ],
)
def test_crc16_matches_the_published_check_values(data: bytes, crc: int) -> None:
    assert crc16(data) == crc


@given(st.binary(max_size=256))
@settings(max_examples=300)
def test_crc16_agrees_with_pymodbus_on_any_bytes(data: bytes) -> None:
    assert crc16(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")


def _pymodbus_frames(pdu: ModbusPDU) -> tuple[bytes, bytes]:
    return RTU.buildFrame(pdu), SOCKET.buildFrame(pdu)


@given(
    unit_id=st.integers(0, 255),
    transaction=st.integers(0, 0xFFFF),
    table=st.sampled_from(list(Table)),
    address=st.integers(0, 0xFF00),
    count=st.integers(1, 125),
)
@settings(max_examples=200)
def test_our_read_requests_are_byte_for_byte_the_frames_pymodbus_builds(
    unit_id: int, transaction: int, table: Table, address: int, count: int
) -> None:
    request_class = {
        Table.COIL: bits.ReadCoilsRequest,
        Table.DISCRETE_INPUT: bits.ReadDiscreteInputsRequest,
        Table.HOLDING: regs.ReadHoldingRegistersRequest,
        Table.INPUT: regs.ReadInputRegistersRequest,
    }[table]
    theirs = request_class(address=address, count=count, dev_id=unit_id, transaction_id=transaction)
    pdu = read_request_pdu(table, address, count)
    assert (rtu_frame(unit_id, pdu), tcp_frame(transaction, unit_id, pdu)) == _pymodbus_frames(theirs)


def test_our_write_requests_are_byte_for_byte_the_frames_pymodbus_builds() -> None:
    recharge = encode_group(
        ACREL_SINGLE_PHASE, "recharge", {"recharge_amount_micros": 100_000_000, "recharge_purchase_count": 8}
    )
    trip = encode_write(GENERIC_THREE_PHASE, {"relay_command": 1})
    assert not isinstance(recharge, CodecError) and not isinstance(trip, CodecError)
    theirs = regs.WriteMultipleRegistersRequest(address=0x31, registers=[0, 10_000, 8], dev_id=1, transaction_id=7)
    assert tcp_frame(7, 1, write_request_pdu(recharge)) == SOCKET.buildFrame(theirs)
    assert rtu_frame(1, write_request_pdu(trip)) == RTU.buildFrame(
        bits.WriteSingleCoilRequest(address=0, bits=[True], dev_id=1)
    )


def test_a_multi_coil_write_packs_bits_lowest_first_like_pymodbus() -> None:
    from powergate.protocols.modbus import WriteRequest

    ours = rtu_frame(1, write_request_pdu(WriteRequest(Table.COIL, 0, (1, 0, 1))))
    assert ours == RTU.buildFrame(bits.WriteMultipleCoilsRequest(address=0, bits=[True, False, True], dev_id=1))


GOLDEN_DESCRIPTIONS = [
    (
        "110309000006C4C4",
        {"protocol": "modbus-rtu", "unit_id": 17, "function": 3, "direction": "request", "address": 0x0900,
         "count": 6, "crc_ok": True},
    ),
    (
        "11030C0000007F000000640000001B968D",
        {"protocol": "modbus-rtu", "direction": "reply", "byte_count": 12, "count": 6,
         "values": [0, 127, 0, 100, 0, 27], "crc_ok": True},
    ),
    (
        "110309000006C4C5",
        {"protocol": "modbus-rtu", "crc": "C4C5", "crc_expected": "C4C4", "crc_ok": False},
    ),
    (
        "00070000000D01100031000306000027100008",
        {"protocol": "modbus-tcp", "transaction": 7, "protocol_id": 0, "length": 13, "unit_id": 1,
         "function": 16, "function_name": "write multiple registers", "direction": "request",
         "address": 0x31, "count": 3, "byte_count": 6, "values": [0, 10_000, 8]},
    ),
    (
        "01050000FF008C3A",
        {"function": 5, "direction": "request or echo reply", "address": 0, "values": [True], "crc_ok": True},
    ),
    (
        "018302C0F1",
        {"function": 0x83, "exception": True, "exception_code": 2, "exception_name": "illegal data address",
         "crc_ok": True},
    ),
    (
        "010300000002C40B",  # RTU read of 2 registers at 0: its bytes also look like an MBAP header
        {"protocol": "modbus-rtu", "unit_id": 1, "address": 0, "count": 2, "crc_ok": True},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("hex_frame", "expected"), GOLDEN_DESCRIPTIONS)
def test_describe_frame_names_the_fields_of_golden_frames(hex_frame: str, expected: dict[str, object]) -> None:
    described = describe_frame(bytes.fromhex(hex_frame))
    assert {key: described.get(key) for key in expected} == expected
    json.dumps(described)  # every value is JSON-ready for `powergate frame decode`


def _pymodbus_examples() -> list[ModbusPDU]:
    return [
        regs.ReadInputRegistersRequest(address=0x13, count=2, dev_id=5, transaction_id=9),
        regs.ReadInputRegistersResponse(registers=[0x0001, 0xE240], dev_id=5, transaction_id=9),
        regs.WriteSingleRegisterRequest(address=0x21, registers=[4400], dev_id=5),
        regs.WriteMultipleRegistersResponse(address=0x31, count=3, dev_id=5),
        bits.ReadDiscreteInputsRequest(address=0, count=2, dev_id=5),
        bits.ReadCoilsResponse(bits=[True, False, True, True, False, False, False, False, True], dev_id=5),
        bits.WriteMultipleCoilsRequest(address=3, bits=[True, True, False], dev_id=5),
        ExceptionResponse(4, 3, device_id=5),
    ]


@pytest.mark.parametrize("pdu", _pymodbus_examples(), ids=lambda pdu: type(pdu).__name__)
def test_describe_frame_reads_frames_pymodbus_builds_in_both_framings(pdu: ModbusPDU) -> None:
    for frame, protocol in zip(_pymodbus_frames(pdu), ("modbus-rtu", "modbus-tcp"), strict=True):
        described = describe_frame(frame)
        assert described["protocol"] == protocol and described["unit_id"] == 5
        assert described["function"] == pdu.function_code
        if getattr(pdu, "registers", None) and described["direction"] != "reply":
            assert described["values"] == list(pdu.registers)
        if isinstance(pdu, bits.ReadCoilsResponse):
            assert described["values"][: len(pdu.bits)] == pdu.bits  # type: ignore[index]
        if protocol == "modbus-rtu":
            assert described["crc_ok"] is True


@pytest.mark.parametrize(
    ("hex_frame", "message"),
    [
        ("", "shorter than the shortest frame"),
        ("FEFEFEFE6801000000000068110433333333B216", "no RTU layout fits"),  # a DL/T 645 frame
        ("0103", "shorter"),
        ("01" * 261, "exceeds the largest ADU"),
        ("01630000000A", "no RTU layout fits"),  # unknown function code
    ],
)
def test_something_that_is_not_modbus_is_a_value_error_saying_why(hex_frame: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        describe_frame(bytes.fromhex(hex_frame))


@given(st.binary(max_size=300))
@settings(max_examples=2_000)
def test_describe_frame_raises_nothing_but_value_error_on_any_bytes(data: bytes) -> None:
    try:
        described = describe_frame(data)
    except ValueError:
        return
    json.dumps(described)


def test_the_docs_examples_describe_as_the_docs_say() -> None:
    doc = DOC.read_text(encoding="utf-8")
    examples = re.findall(r"<!-- frame: ([0-9A-F ]+) -->\s*```json\n(.*?)```", doc, flags=re.S)
    assert len(examples) >= 3
    for hex_frame, expected in examples:
        assert describe_frame(bytes.fromhex(hex_frame)) == json.loads(expected), hex_frame
