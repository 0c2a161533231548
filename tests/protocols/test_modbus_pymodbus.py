"""Our register maps against pymodbus's own TCP server and client, in one process over real localhost TCP.

The server's registers are filled with the words our codec encodes; pymodbus's client reads them by our read
plan and our codec must get the same values back. Writes go the other way. Every packet on the wire is also
fed to ``describe_frame``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from test_modbus_codec import ACREL_VALUES

from powergate.protocols.modbus import (
    ACREL_SINGLE_PHASE,
    GENERIC_THREE_PHASE,
    CodecError,
    RegisterMap,
    Table,
    decode_block,
    decode_write,
    describe_frame,
    encode_block,
    encode_group,
    encode_write,
    read_plan,
)
from testkit import free_port

UNIT_ID = 7
SIM_TYPE = {True: SimType.BITS, False: SimType.REGISTERS}

GENERIC_VALUES = {
    "voltage_a_dv": 2301,
    "voltage_b_dv": 2299,
    "voltage_c_dv": 2310,
    "current_a_ma": 12_345,
    "current_b_ma": 70_000,
    "current_c_ma": 0,
    "active_power_w": -1_500,
    "active_power_a_w": -500,
    "active_power_b_w": -600,
    "active_power_c_w": -400,
    "power_factor_permille": -950,
    "frequency_centihz": 4_998,
    "total_energy_wh": 98_765_430,
    "reverse_energy_wh": 12_340,
    "sharp_energy_wh": 10,
    "peak_energy_wh": 20,
    "flat_energy_wh": 30,
    "valley_energy_wh": 98_765_370,
    "serial_number": 20_260_301,
    "power_limit_w": 30_000,
    "relay_command": 0,
    "relay_state": 0,
    "cover_open": 1,
}


def runs(register_map: RegisterMap, table: Table) -> list[tuple[int, int]]:
    """(address, count) of each run of adjacent registers of a table, write-only ones included."""
    result: list[tuple[int, int]] = []
    for register in register_map.in_table(table):
        if result and sum(result[-1]) == register.address:
            result[-1] = (result[-1][0], result[-1][1] + register.count)
        else:
            result.append((register.address, register.count))
    return result


def sim_blocks(register_map: RegisterMap, table: Table, values: dict[str, int]) -> list[SimData]:
    """One SimData per run of adjacent registers, words as our codec encodes them (gaps stay undefined)."""
    blocks: list[SimData] = []
    for address, count in runs(register_map, table):
        words = encode_block(register_map, table, address, count, values)
        assert not isinstance(words, CodecError), words
        typed: list[bool] | list[int] = [bool(w) for w in words] if table.is_bits else words
        blocks.append(SimData(address, values=typed, datatype=SIM_TYPE[table.is_bits]))
    return blocks


def sim_device(register_map: RegisterMap, values: dict[str, int]) -> SimDevice:
    """A pymodbus device with four separate tables; a table the map leaves empty gets one far-away filler."""
    tables: list[list[SimData]] = []
    for table in (Table.COIL, Table.DISCRETE_INPUT, Table.HOLDING, Table.INPUT):
        filler = SimData(0xF000, values=[False] * 16 if table.is_bits else [0], datatype=SIM_TYPE[table.is_bits])
        tables.append(sim_blocks(register_map, table, values) or [filler])
    coils, inputs, holding, input_registers = tables
    return SimDevice(id=UNIT_ID, simdata=(coils, inputs, holding, input_registers))


Scenario = Callable[[AsyncModbusTcpClient], Awaitable[None]]


def run_against_server(register_map: RegisterMap, values: dict[str, int], scenario: Scenario) -> list[bytes]:
    """Run ``scenario`` with a client of a pymodbus server holding ``values``; return every packet seen."""
    packets: list[bytes] = []

    def trace(_sending: bool, data: bytes) -> bytes:
        packets.append(bytes(data))
        return data

    async def main() -> None:
        port = free_port()
        server = ModbusTcpServer(sim_device(register_map, values), address=("127.0.0.1", port), trace_packet=trace)
        await server.serve_forever(background=True)
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5)
        try:
            assert await client.connect()
            await scenario(client)
        finally:
            client.close()
            await server.shutdown()

    asyncio.run(asyncio.wait_for(main(), timeout=30))
    return packets


async def read_all(client: AsyncModbusTcpClient, register_map: RegisterMap) -> dict[str, int]:
    values: dict[str, int] = {}
    readers = {
        Table.COIL: client.read_coils,
        Table.DISCRETE_INPUT: client.read_discrete_inputs,
        Table.HOLDING: client.read_holding_registers,
        Table.INPUT: client.read_input_registers,
    }
    for block in read_plan(register_map):
        reply = await readers[block.table](block.address, count=block.count, device_id=UNIT_ID)
        assert not reply.isError(), reply
        words = [int(b) for b in reply.bits[: block.count]] if block.table.is_bits else reply.registers
        decoded, errors = decode_block(register_map, block.table, block.address, words)
        assert errors == []
        values.update(decoded)
    return values


def test_pymodbus_client_reads_back_every_acrel_value_our_codec_put_in_a_pymodbus_server() -> None:
    seen: dict[str, int] = {}

    async def scenario(client: AsyncModbusTcpClient) -> None:
        seen.update(await read_all(client, ACREL_SINGLE_PHASE))

    run_against_server(ACREL_SINGLE_PHASE, ACREL_VALUES, scenario)
    assert seen == ACREL_VALUES


def test_pymodbus_client_reads_back_every_three_phase_value_across_all_four_tables() -> None:
    seen: dict[str, int] = {}

    async def scenario(client: AsyncModbusTcpClient) -> None:
        seen.update(await read_all(client, GENERIC_THREE_PHASE))

    run_against_server(GENERIC_THREE_PHASE, GENERIC_VALUES, scenario)
    assert seen == GENERIC_VALUES


def test_a_recharge_and_a_coil_trip_written_by_pymodbus_land_as_our_codec_meant() -> None:
    recharge = encode_group(
        ACREL_SINGLE_PHASE, "recharge", {"recharge_amount_micros": 123_450_000, "recharge_purchase_count": 9}
    )
    assert not isinstance(recharge, CodecError)
    landed: list[dict[str, int] | CodecError] = []

    async def scenario(client: AsyncModbusTcpClient) -> None:
        reply = await client.write_registers(recharge.address, list(recharge.words), device_id=UNIT_ID)
        assert not reply.isError()
        back = await client.read_holding_registers(recharge.address, count=len(recharge.words), device_id=UNIT_ID)
        landed.append(decode_write(ACREL_SINGLE_PHASE, Table.HOLDING, recharge.address, back.registers))
        outside = await client.read_holding_registers(0x002A, count=1, device_id=UNIT_ID)
        assert outside.isError()  # an address no register defines: illegal data address

    packets = run_against_server(ACREL_SINGLE_PHASE, ACREL_VALUES, scenario)
    assert landed == [{"recharge_amount_micros": 123_450_000, "recharge_purchase_count": 9}]
    described = [describe_frame(packet) for packet in packets]
    assert {d["protocol"] for d in described} == {"modbus-tcp"}
    write = next(d for d in described if d["function"] == 0x10 and d["direction"] == "request")
    assert (write["address"], write["values"]) == (0x31, [0, 12_345, 9])  # 123.45 yuan = 12345 fen
    assert any(d.get("exception_name") == "illegal data address" for d in described)

    trip = encode_write(GENERIC_THREE_PHASE, {"relay_command": 1})
    assert not isinstance(trip, CodecError)
    tripped: list[bool] = []

    async def trip_scenario(client: AsyncModbusTcpClient) -> None:
        assert not (await client.write_coil(trip.address, bool(trip.words[0]), device_id=UNIT_ID)).isError()
        tripped.append((await client.read_coils(trip.address, count=1, device_id=UNIT_ID)).bits[0])

    run_against_server(GENERIC_THREE_PHASE, GENERIC_VALUES, trip_scenario)
    assert tripped == [True]
