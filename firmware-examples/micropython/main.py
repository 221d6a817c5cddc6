# MicroPython (ESP32, Pico W) machine controller publishing to meshlet.
#
# Product: machine_health (schema/examples/machine_health.yaml)
# Topic:   plant/<SITE>/machine/<MACHINE_ID>/telemetry
# Payload: {"temp": 71.5, "vib": {"rms": 2.1}, "rpm": 1480, "state": "ok",
#           "ts": "2024-05-01T12:00:00.120Z"}
#
# umqtt.simple publishes QoS 1 and blocks until the PUBACK, which meshlet
# sends only once the reading is stored: a returned publish() is a stored
# reading. Time comes from NTP so readings carry their real event time.

import json
import random
import time

import network
import ntptime
from umqtt.simple import MQTTClient

WIFI_SSID = "plant-iot"
WIFI_PASSWORD = "change-me"
MESHLET_HOST = "192.168.10.2"
MESHLET_PORT = 1883
SITE = "berlin"          # one of: berlin, lyon, brno
MACHINE_ID = "PR-0042"   # pattern [A-Z]{2}-[0-9]{4}
TOPIC = "plant/{}/machine/{}/telemetry".format(SITE, MACHINE_ID)


def wifi():
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    wlan.connect(WIFI_SSID, WIFI_PASSWORD)
    while not wlan.isconnected():
        time.sleep(0.5)


def iso_now():
    # MicroPython's epoch may be 2000; gmtime gives calendar fields either way.
    y, mo, d, h, mi, s = time.gmtime()[:6]
    return "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}Z".format(y, mo, d, h, mi, s)


def reading():
    return {
        "temp": 65.0 + random.getrandbits(7) / 10,
        "vib": {"rms": 2.0 + random.getrandbits(5) / 100},
        "rpm": 1480 + random.getrandbits(4),
        "state": "ok",
        "ts": iso_now(),
    }


def main():
    wifi()
    ntptime.settime()
    client = MQTTClient("ctrl-" + MACHINE_ID, MESHLET_HOST, port=MESHLET_PORT, keepalive=30)
    client.connect(clean_session=False)
    while True:
        try:
            client.publish(TOPIC, json.dumps(reading()), qos=1)
        except OSError:
            time.sleep(2)
            client.connect(clean_session=False)
            continue
        time.sleep(1)


main()
