"""paho-mqtt (pinned in requirements.txt) against the node's embedded broker.

tests/it/mqtt_conformance.rs runs one case per call and reads the JSON line
this prints. Usage: paho_conformance.py <host> <port> <case> <5|4>

Absence is proven without sleeping: after what must not arrive, the
publisher sends a QoS 1 marker on a topic the subscriber holds; the broker
routes one connection's publishes in order and delivers to one subscriber
in order, so once the marker is in, nothing else is coming.
"""

import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST, PORT, CASE, VERSION = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
PROTOCOL = mqtt.MQTTv5 if VERSION == "5" else mqtt.MQTTv311
DEADLINE = 10.0


class Peer:
    """One client with its received messages and CONNACK."""

    def __init__(self, client_id, login=None):
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PROTOCOL
        )
        if login:
            self.client.username_pw_set(*login)
        self.messages = []
        self.changed = threading.Condition()
        self.connack = None
        self.subacks = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(HOST, PORT, keepalive=30)
        self.client.loop_start()
        with self.changed:
            if not self.changed.wait_for(lambda: self.connack is not None, DEADLINE):
                raise RuntimeError(f"{client_id}: no CONNACK")
        if self.connack[0].is_failure:
            raise RuntimeError(f"{client_id}: refused {self.connack[0]}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.changed:
            self.connack = (reason_code, properties)
            self.changed.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.changed:
            self.subacks[mid] = [getattr(rc, "value", rc) for rc in reason_codes]
            self.changed.notify_all()

    def _on_message(self, client, userdata, message):
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def subscribe(self, topic, qos=0):
        """Subscribes and waits for the SUBACK; its return codes."""
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        with self.changed:
            if not self.changed.wait_for(lambda: mid in self.subacks, DEADLINE):
                raise RuntimeError(f"no SUBACK for {topic}")
            return self.subacks[mid]

    def unsubscribe(self, topic):
        self.client.unsubscribe(topic)

    def publish(self, topic, payload, qos=0, retain=False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(DEADLINE)

    def wait_for(self, topic):
        """Messages received up to and including the first on `topic`."""
        with self.changed:
            done = self.changed.wait_for(
                lambda: any(m.topic == topic for m in self.messages), DEADLINE
            )
            if not done:
                raise RuntimeError(f"nothing on {topic}")
            return list(self.messages)

    def sync(self, marker, via=None):
        """Has `via` (or ourselves) publish `marker` to us and waits for
        it: everything `via` published before it has arrived."""
        self.subscribe(marker, 1)
        (via or self).publish(marker, b"marker", qos=1)
        return [m for m in self.wait_for(marker) if m.topic != marker]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def basics():
    v = VERSION
    result = {}
    sub = Peer(f"paho-sub-{v}")
    sub.subscribe("q/#", 2)
    pub = Peer(f"paho-pub-{v}")
    sub.sync(f"mark/{v}/0")
    for qos in range(3):
        pub.publish(f"q/{qos}", f"at {qos}".encode(), qos=qos)
    result["received"] = sorted({m.topic for m in sub.sync(f"mark/{v}/1", pub) if m.topic.startswith("q/")})

    # Retained: set, delivered to a new subscriber with the retain flag;
    # cleared by an empty retained publish.
    pub.publish(f"r{v}/keep", b"kept", qos=1, retain=True)
    late = Peer(f"paho-late-{v}")
    late.subscribe(f"r{v}/#", 1)
    got = [m for m in late.sync(f"mark/{v}/2") if m.topic == f"r{v}/keep"]
    result["retained"] = got[0].payload.decode() if got and got[0].retain else None
    pub.publish(f"r{v}/keep", b"", qos=1, retain=True)
    later = Peer(f"paho-later-{v}")
    later.subscribe(f"r{v}/#", 1)
    result["cleared"] = [m.topic for m in later.sync(f"mark/{v}/3") if m.topic.startswith(f"r{v}/")]

    # `$`-topics: not matched by `#`, matched by a filter that names them.
    hashed = Peer(f"paho-hash-{v}")
    hashed.subscribe("#", 0)
    named = Peer(f"paho-dollar-{v}")
    named.subscribe("$app/#", 0)
    hashed.sync(f"mark/{v}/4")
    named.sync(f"mark/{v}/5")
    pub.publish("$app/status", b"up", qos=1)
    result["dollar_by_name"] = [m.topic for m in named.wait_for("$app/status") if m.topic.startswith("$")]
    result["dollar_by_hash"] = [m.topic for m in hashed.sync(f"mark/{v}/6", pub) if m.topic.startswith("$")]

    # Unsubscribe: nothing more on the filter.
    sub.subscribe(f"u{v}/#", 1)
    sub.unsubscribe(f"u{v}/#")
    before = len(sub.sync(f"mark/{v}/7"))
    pub.publish(f"u{v}/x", b"gone", qos=1)
    after = sub.sync(f"mark/{v}/8", pub)
    result["after_unsubscribe"] = [m.topic for m in after[before:] if m.topic.startswith(f"u{v}/")]

    # A zero-length client id: MQTT 5 gets one assigned (in CONNACK), a
    # 3.1.1 clean session is accepted.
    anonymous = Peer("")
    if VERSION == "5":
        properties = anonymous.connack[1]
        result["assigned_id"] = getattr(properties, "AssignedClientIdentifier", None)
    result["anonymous_accepted"] = not anonymous.connack[0].is_failure
    anonymous.close()
    for peer in (sub, pub, late, later, hashed, named):
        peer.close()
    return result


def acl():
    """A user under `subscribe_acl`: a filter within its patterns is
    granted, one beyond is refused."""
    peer = Peer(f"paho-acl-{VERSION}", ("sensor", "s3cret"))
    result = {
        "within": peer.subscribe("cmd/sensor/1", 1),
        "beyond": peer.subscribe("plant/#", 1),
    }
    peer.close()
    return result


CASES = {"basics": basics, "acl": acl}

if __name__ == "__main__":
    print(json.dumps(CASES[CASE]()))
