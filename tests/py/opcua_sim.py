"""An OPC UA server for tests: asyncua's server with variables preloaded
from a JSON argument, changed by lines on stdin.

    python3 tests/py/opcua_sim.py PORT '{"ns=2;s=M-0001.Voltage": 230.5, ..}' [USER:PASSWORD]

Serves opc.tcp://127.0.0.1:PORT/meshlet/ with security mode None. Each
JSON entry is one variable under Objects (a float is a Double, an int an
Int32, a bool a Boolean, a string a String); namespace 2 is the test's.
With USER:PASSWORD, only that user may open a session (no anonymous
sessions). A line `set <node id> <json value>` on stdin writes a value,
as a PLC would; `ok` is printed once it is written. Runs until killed.
"""

import asyncio
import json
import sys

from asyncua import Server, ua
from asyncua.server.user_managers import UserManager
from asyncua.server.users import User, UserRole


class OneUser(UserManager):
    def __init__(self, name, password):
        self.name, self.password = name, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.name and password == self.password:
            return User(role=UserRole.User)
        return None


def variant(value):
    if isinstance(value, bool):
        return ua.Variant(value, ua.VariantType.Boolean)
    if isinstance(value, int):
        return ua.Variant(value, ua.VariantType.Int32)
    if isinstance(value, float):
        return ua.Variant(value, ua.VariantType.Double)
    return ua.Variant(value, ua.VariantType.String)


async def main():
    port = int(sys.argv[1])
    init = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    server = Server(user_manager=OneUser(*sys.argv[3].split(":", 1)) if len(sys.argv) > 3 else None)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/meshlet/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    if len(sys.argv) > 3:
        server.set_security_IDs(["Username"])
    ns = await server.register_namespace("urn:meshlet:test")
    assert ns == 2, ns
    nodes = {}
    for node_id, value in init.items():
        nid = ua.NodeId.from_string(node_id)
        nodes[node_id] = await server.nodes.objects.add_variable(
            nid, ua.QualifiedName(str(nid.Identifier), nid.NamespaceIndex), variant(value)
        )
    loop = asyncio.get_running_loop()
    async with server:
        print("ready", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                # The test went away: keep serving until killed.
                await asyncio.sleep(3600)
                continue
            _, node_id, value = line.strip().split(" ", 2)
            await nodes[node_id].write_value(variant(json.loads(value)))
            print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
