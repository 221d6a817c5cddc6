"""A Modbus TCP device for tests: pymodbus's server with the four tables
preloaded from a JSON argument.

    python3 tests/py/modbus_sim.py PORT '{"hr": [..], "ir": [..], "co": [..], "di": [..]}'

Protocol address 0 is the first value of each list; addresses past a
list's end are answered with exception 2 (illegal data address), as a real
device answers registers it does not map. Holding registers and coils can
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
from pymodbus.server import StartAsyncTcpServer


def block(values):
    # pymodbus shifts protocol addresses by one before the block lookup.
    return ModbusSequentialDataBlock(1, list(values) or [0])


async def main():
    port = int(sys.argv[1])
    init = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    device = ModbusSlaveContext(
        di=block(init.get("di", [])),
        co=block(init.get("co", [])),
        ir=block(init.get("ir", [])),
        hr=block(init.get("hr", [])),
    )
    context = ModbusServerContext(slaves=device, single=True)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main())
