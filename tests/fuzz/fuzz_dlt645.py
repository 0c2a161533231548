"""Coverage-guided fuzz target for the DL/T 645 codec and the DTU stream decoder (atheris / libFuzzer).

atheris is an optional tool, not a test dependency. Run it (see docs/testing.md)::

    python -m venv /tmp/fuzz && /tmp/fuzz/bin/pip install atheris
    PYTHONPATH=src /tmp/fuzz/bin/python tests/fuzz/fuzz_dlt645.py -max_total_time=300 -max_len=1024

Whatever the bytes, the codec must answer with values or ``DecodeError``: any exception is a crash that
libFuzzer reports with the input that caused it. ``fuzz_one_input`` is also run on golden inputs by the
ordinary test suite so this file cannot rot.
"""

from __future__ import annotations

import sys

from powergate.protocols.dlt645 import REGISTRY, DecodeError, Frame, decode_data, decode_frame, describe
from powergate.protocols.dlt645.control import parse_recharge, parse_relay_command
from powergate.protocols.dtu import DtuStreamDecoder

DIS = sorted(REGISTRY)


def fuzz_one_input(data: bytes) -> None:
    frame = decode_frame(data)
    assert isinstance(frame, Frame | DecodeError)
    if isinstance(frame, Frame):
        describe(frame)
        parse_relay_command(frame)
        parse_recharge(frame)
    if data:
        # the first byte picks a DI and a read size: the rest is a payload and a stream cut into reads
        decode_data(DIS[data[0] % len(DIS)], data[1:])
        read_size = 1 + data[0] % 64
        decoder = DtuStreamDecoder(max_buffer_bytes=1024)
        for start in range(1, len(data), read_size):
            for item in decoder.feed(data[start : start + read_size]):
                if isinstance(item, Frame):
                    describe(item)
        decoder.flush()
        assert decoder.buffered_bytes == 0


def main() -> None:
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install atheris (see docs/testing.md)", file=sys.stderr)
        raise SystemExit(2) from None
    atheris.instrument_all()  # coverage guidance for the already imported codec modules
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
