"""Modbus for PowerGate meters: register maps as data, a pure value codec, and RTU / TCP frame analysis.

``registers`` describes a meter model's registers, ``maps`` holds the built-in models, ``codec`` turns
register words into named integer values in our units and back, ``frame`` builds and describes Modbus RTU
frames and Modbus TCP ADUs (``describe_frame`` backs ``powergate frame decode``). Standard library only.
"""

from powergate.protocols.modbus.codec import (
    CodecError,
    WriteRequest,
    decode_block,
    decode_flags,
    decode_value,
    decode_write,
    encode_block,
    encode_flags,
    encode_group,
    encode_value,
    encode_write,
)
from powergate.protocols.modbus.frame import (
    crc16,
    describe_frame,
    read_request_pdu,
    rtu_frame,
    tcp_frame,
    write_request_pdu,
)
from powergate.protocols.modbus.maps import (
    ACREL_SINGLE_PHASE,
    BUILT_IN_MAPS,
    GENERIC_THREE_PHASE,
    register_map,
)
from powergate.protocols.modbus.registers import (
    Access,
    DataType,
    ReadBlock,
    Register,
    RegisterMap,
    Table,
    WordOrder,
    read_plan,
)

__all__ = [
    "ACREL_SINGLE_PHASE",
    "BUILT_IN_MAPS",
    "GENERIC_THREE_PHASE",
    "Access",
    "CodecError",
    "DataType",
    "ReadBlock",
    "Register",
    "RegisterMap",
    "Table",
    "WordOrder",
    "WriteRequest",
    "crc16",
    "decode_block",
    "decode_flags",
    "decode_value",
    "decode_write",
    "describe_frame",
    "encode_block",
    "encode_flags",
    "encode_group",
    "encode_value",
    "encode_write",
    "read_plan",
    "read_request_pdu",
    "register_map",
    "rtu_frame",
    "tcp_frame",
    "write_request_pdu",
]
