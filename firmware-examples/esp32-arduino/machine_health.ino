// ESP32 (Arduino core) machine controller publishing to meshlet.
//
// Product: machine_health (schema/examples/machine_health.yaml)
// Topic:   plant/<SITE>/machine/<MACHINE_ID>/telemetry
// Payload: {"temp": 71.5, "vib": {"rms": 2.1}, "rpm": 1480, "state": "ok",
//           "ts": "2024-05-01T12:00:00.120Z"}
//
// Libraries: PubSubClient (Nick O'Leary) and the ESP32 Arduino core (WiFi,
// SNTP via configTime). PubSubClient publishes QoS 0 only; meshlet stores
// QoS 0 readings all the same, but without a PUBACK the device cannot
// know a reading arrived. For QoS 1 on ESP32 use ESP-IDF's esp-mqtt
// (see the note at the end). The reading carries its own time, taken from
// SNTP, so meshlet keeps event order even when readings arrive late.

#include <WiFi.h>
#include <PubSubClient.h>
#include <time.h>

const char *WIFI_SSID = "plant-iot";
const char *WIFI_PASSWORD = "change-me";
const char *MESHLET_HOST = "192.168.10.2";  // the gateway running meshlet
const uint16_t MESHLET_PORT = 1883;
const char *SITE = "berlin";                 // one of: berlin, lyon, brno
const char *MACHINE_ID = "PR-0042";          // pattern [A-Z]{2}-[0-9]{4}

WiFiClient net;
PubSubClient mqtt(net);
char topic[96];

static float readTemperature() { return 65.0 + (esp_random() % 100) / 10.0; }
static float readVibrationRms() { return 2.0 + (esp_random() % 50) / 100.0; }
static int readSpindleRpm() { return 1480 + esp_random() % 20; }

static void isoNow(char *out, size_t len) {
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, len - n, ".%03ldZ", tv.tv_usec / 1000);
}

static void connectMqtt() {
  while (!mqtt.connected()) {
    String clientId = String("ctrl-") + MACHINE_ID;
    if (!mqtt.connect(clientId.c_str())) {
      delay(2000);
    }
  }
}

void setup() {
  Serial.begin(115200);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  while (WiFi.status() != WL_CONNECTED) {
    delay(500);
  }
  configTime(0, 0, "pool.ntp.org");  // UTC; meshlet wants real event times
  snprintf(topic, sizeof topic, "plant/%s/machine/%s/telemetry", SITE, MACHINE_ID);
  mqtt.setServer(MESHLET_HOST, MESHLET_PORT);
}

void loop() {
  connectMqtt();
  mqtt.loop();
  char ts[32];
  isoNow(ts, sizeof ts);
  char payload[200];
  snprintf(payload, sizeof payload,
           "{\"temp\": %.1f, \"vib\": {\"rms\": %.2f}, \"rpm\": %d, \"state\": \"ok\", \"ts\": \"%s\"}",
           readTemperature(), readVibrationRms(), readSpindleRpm(), ts);
  if (!mqtt.publish(topic, payload)) {
    Serial.println("publish failed; reconnecting");
    mqtt.disconnect();
  }
  delay(1000);  // the product expects about 1 Hz (history keep: 100000)
}

// QoS 1 with ESP-IDF's esp-mqtt instead of PubSubClient:
//   esp_mqtt_client_publish(client, topic, payload, 0, /*qos*/ 1, /*retain*/ 0);
// and count MQTT_EVENT_PUBLISHED events: each one is a reading meshlet has
// stored durably.
