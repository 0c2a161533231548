"""A real Modbus master (Debian's ``mbpoll``) and the pymodbus client talk to virtual meters' Modbus TCP server.

``mbpoll`` must be installed (``apt-get install -y mbpoll``): under CI=true a missing ``mbpoll`` fails the test,
elsewhere it is skipped with a loud reason.
"""

from __future__ import annotations

import asyncio
import re

from pymodbus.client import AsyncModbusTcpClient

from powergate.protocols.modbus.codec import CodecError, decode_block, encode_group
from powergate.protocols.modbus.maps import ACREL_SINGLE_PHASE, GENERIC_THREE_PHASE
from powergate.protocols.modbus.registers import Table
from powergate.sim.meter import VirtualMeter
from powergate.sim.modbus_face import bound_port, start_modbus_server
from powergate.sim.profiles import RESIDENTIAL
from testkit import require_command

T0 = 1_700_000_000


class Clock:
    def __init__(self) -> None:
        self.now_s = T0

    def __call__(self) -> int:
        return self.now_s


def make_meters(count: int) -> list[VirtualMeter]:
    return [
        VirtualMeter(f"{i:012d}", RESIDENTIAL, seed=i, now_s=T0, band_ticks=(i, 2 * i, 3 * i, 4 * i))
        for i in range(1, count + 1)
    ]


async def mbpoll(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "mbpoll", "-m", "tcp", "-0", "-o", "2", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, (out.decode(), err.decode())
    return out.decode()


def polled(output: str) -> dict[int, int]:
    return {int(address): int(value) for address, value in re.findall(r"^\[(\d+)\]:\s+(-?\d+)", output, re.M)}


def test_mbpoll_reads_the_registers_of_the_addressed_meter() -> None:
    require_command("mbpoll", "mbpoll")

    async def scenario() -> None:
        meters, clock = make_meters(3), Clock()
        server, _ = await start_modbus_server(meters, "127.0.0.1", 0, clock=clock)
        try:
            clock.now_s += 2 * 3600
            port = str(bound_port(server))
            out = await mbpoll("-a", "2", "-p", port, "-t", "4", "-r", "0", "-c", "24", "-1", "127.0.0.1")
            words = polled(out)
            assert sorted(words) == list(range(24))
            values, errors = decode_block(ACREL_SINGLE_PHASE, Table.HOLDING, 0, [words[i] for i in range(24)])
            meter = meters[1]
            assert not errors
            assert values["total_energy_wh"] == meter.total_ticks() * 10 > 0
            assert values["valley_energy_wh"] == meter.band_ticks(3) * 10
            assert values["remaining_amount_micros"] == meter.balance_micros // 10_000 * 10_000
            assert 2134 <= values["voltage_dv"] <= 2266
            assert values["relay_state"] == 0
        finally:
            await server.shutdown()

    asyncio.run(scenario())


def test_mbpoll_writes_the_relay_command_and_the_meter_trips_and_closes() -> None:
    require_command("mbpoll", "mbpoll")

    async def scenario() -> None:
        meters = make_meters(2)
        server, _ = await start_modbus_server(meters, "127.0.0.1", 0, clock=Clock())
        try:
            port = str(bound_port(server))
            await mbpoll("-a", "1", "-p", port, "-t", "4", "-r", "48", "127.0.0.1", str(0x1A))
            assert meters[0].relay_open() and not meters[1].relay_open()
            state = polled(await mbpoll("-a", "1", "-p", port, "-t", "4", "-r", "23", "-c", "1", "-1", "127.0.0.1"))
            assert state == {23: 1}
            await mbpoll("-a", "1", "-p", port, "-t", "4", "-r", "48", "127.0.0.1", str(0x1C))
            assert not meters[0].relay_open()
        finally:
            await server.shutdown()

    asyncio.run(scenario())


def test_mbpoll_gets_an_exception_for_an_address_outside_the_map() -> None:
    require_command("mbpoll", "mbpoll")

    async def scenario() -> None:
        server, _ = await start_modbus_server(make_meters(1), "127.0.0.1", 0, clock=Clock())
        try:
            process = await asyncio.create_subprocess_exec(
                "mbpoll", "-m", "tcp", "-0", "-o", "2", "-a", "1", "-p", str(bound_port(server)), "-t", "4",
                "-r", "42", "-c", "2", "-1", "127.0.0.1",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(process.communicate(), 20)
            assert "Illegal data address" in out.decode(), out.decode()
        finally:
            await server.shutdown()

    asyncio.run(scenario())


def test_the_pymodbus_client_recharges_once_and_a_stale_count_is_refused() -> None:
    async def scenario() -> None:
        meters = make_meters(1)
        server, context = await start_modbus_server(meters, "127.0.0.1", 0, clock=Clock())
        client = AsyncModbusTcpClient("127.0.0.1", port=bound_port(server))
        try:
            assert await client.connect()
            request = encode_group(ACREL_SINGLE_PHASE, "recharge",
                                   {"recharge_amount_micros": 30_000_000, "recharge_purchase_count": 1})  # fmt: skip
            assert not isinstance(request, CodecError), request
            before = meters[0].balance_micros
            for _ in range(2):  # the retry is acknowledged and credits nothing
                reply = await client.write_registers(request.address, list(request.words), device_id=1)
                assert not reply.isError()
            assert meters[0].balance_micros == before + 30_000_000 and meters[0].purchase_count == 1
            stale = encode_group(ACREL_SINGLE_PHASE, "recharge",
                                 {"recharge_amount_micros": 30_000_000, "recharge_purchase_count": 7})  # fmt: skip
            assert not isinstance(stale, CodecError), stale
            refused = await client.write_registers(stale.address, list(stale.words), device_id=1)
            assert refused.isError() and refused.exception_code == 3
            half = await client.write_registers(0x31, [0, 1], device_id=1)  # amount without its count
            assert half.isError()
            assert context.counters.refused == 2
        finally:
            client.close()
            await server.shutdown()

    asyncio.run(scenario())


def test_a_three_phase_map_trips_by_coil_and_reports_the_relay_as_a_discrete_input() -> None:
    async def scenario() -> None:
        meters = make_meters(1)
        server, _ = await start_modbus_server(meters, "127.0.0.1", 0, register_map=GENERIC_THREE_PHASE,
                                              clock=Clock())  # fmt: skip
        client = AsyncModbusTcpClient("127.0.0.1", port=bound_port(server))
        try:
            assert await client.connect()
            assert not (await client.write_coil(0, True, device_id=1)).isError()
            assert meters[0].relay_open()
            state = await client.read_discrete_inputs(0, count=2, device_id=1)
            assert state.bits[:2] == [True, False]
            energy = await client.read_input_registers(0x13, count=2, device_id=1)
            assert (energy.registers[0] << 16 | energy.registers[1]) * 10 == meters[0].total_ticks() * 10
        finally:
            client.close()
            await server.shutdown()

    asyncio.run(scenario())
