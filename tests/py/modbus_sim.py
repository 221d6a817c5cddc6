"""A Modbus TCP device for tests: pymodbus's server with the four tables
preloaded from a JSON argument.

    python3 tests/py/modbus_sim.py PORT '{"hr": [..], "ir": [..], "co": [..], "di": [..]}'

Protocol address 0 is the first value of each list; a table left out holds
one zero; a read past a list's end (any read of an empty list) is answered
with exception 2 (illegal data address), as a real device answers
registers it does not map. Holding registers and coils can
be written over Modbus, so a test changes readings as a master would.
Any unit id is answered. Runs until killed.
"""

import asyncio
import json
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import StartAsyncTcpServer


def block(values):
    # pymodbus shifts protocol addresses by one before the block lookup.
    # A block needs one value; an empty list maps nothing (see SizedDevice).
    return ModbusSequentialDataBlock(1, list(values) or [0])


class SizedDevice(ModbusSlaveContext):
    """A device that maps only its lists: pymodbus 3.9's sequential block
    answers a read past its end with fewer values than asked (a short
    reply); a device answers exception 2 instead, which this does."""

    def __init__(self, sizes, **blocks):
        super().__init__(**blocks)
        self.sizes = sizes

    async def async_getValues(self, fc_as_hex, address, count=1):
        # Protocol address 0 is the block's first value (see `block`).
        if address < 0 or address + count > self.sizes[self.decode(fc_as_hex)]:
            return ExceptionResponse.ILLEGAL_ADDRESS
        return self.getValues(fc_as_hex, address, count)


async def main():
    port = int(sys.argv[1])
    init = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    # A table left out holds one zero; an empty list maps no address.
    tables = {t: init.get(t, [0]) for t in ("di", "co", "ir", "hr")}
    device = SizedDevice(
        {t[0]: len(values) for t, values in tables.items()},
        **{t: block(values) for t, values in tables.items()},
    )
    context = ModbusServerContext(slaves=device, single=True)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main())
