/*
 * A machine controller publishing its health to meshlet over MQTT.
 *
 * Product: machine_health (schema/examples/machine_health.yaml)
 * Topic:   plant/<site>/machine/<machine_id>/telemetry
 * Payload: {"temp": 71.5, "vib": {"rms": 2.1}, "rpm": 1480, "state": "ok",
 *           "ts": "2024-05-01T12:00:00.120Z"}
 *
 * Build:  cc -O2 -o machine-health main.c -lmosquitto
 * Run:    ./machine-health HOST PORT SITE MACHINE_ID [COUNT]
 *
 * Each reading is published with QoS 1 and the program waits for its
 * PUBACK: meshlet acknowledges only once the reading is stored durably, so
 * an acknowledged reading is never lost. The reading carries its own time
 * (`ts`), so if a PUBACK is lost and the reading is sent again, meshlet
 * recognises the repeat and stores it once.
 */
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile int acked_mid = -1;

static void on_publish(struct mosquitto *mosq, void *userdata, int mid) {
    (void)mosq;
    (void)userdata;
    acked_mid = mid;
}

/* RFC 3339 UTC with milliseconds, e.g. 2024-05-01T12:00:00.120Z */
static void now_rfc3339(char *out, size_t len) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s HOST PORT SITE MACHINE_ID [COUNT]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    const char *site = argv[3];
    const char *machine = argv[4];
    int count = argc > 5 ? atoi(argv[5]) : 1;

    char topic[256];
    snprintf(topic, sizeof topic, "plant/%s/machine/%s/telemetry", site, machine);

    mosquitto_lib_init();
    char client_id[64];
    snprintf(client_id, sizeof client_id, "ctrl-%s", machine);
    /* clean_session = false: after a broker restart this client resends
     * what was not acknowledged instead of discarding it. */
    struct mosquitto *mosq = mosquitto_new(client_id, false, NULL);
    if (!mosq) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    mosquitto_publish_callback_set(mosq, on_publish);
    int rc = mosquitto_connect(mosq, host, port, 30);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "connect to %s:%d failed: %s\n", host, port, mosquitto_strerror(rc));
        return 1;
    }

    for (int i = 0; i < count; i++) {
        char ts[40];
        char payload[256];
        now_rfc3339(ts, sizeof ts);
        double temp = 65.0 + (i % 20) * 0.5;
        snprintf(payload, sizeof payload,
                 "{\"temp\": %.1f, \"vib\": {\"rms\": %.2f}, \"rpm\": %d, \"state\": \"ok\", \"ts\": \"%s\"}",
                 temp, 2.0 + (i % 5) * 0.1, 1480 + i % 10, ts);
        int mid = 0;
        rc = mosquitto_publish(mosq, &mid, topic, (int)strlen(payload), payload, 1, false);
        if (rc != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "publish failed: %s\n", mosquitto_strerror(rc));
            return 1;
        }
        /* Wait for this reading's PUBACK (at most ~10 s). */
        for (int waited = 0; acked_mid != mid; waited++) {
            rc = mosquitto_loop(mosq, 100, 1);
            if (rc != MOSQ_ERR_SUCCESS || waited > 100) {
                fprintf(stderr, "no acknowledgement for reading %d: %s\n", i, mosquitto_strerror(rc));
                return 1;
            }
        }
        printf("stored: %s\n", payload);
    }
    mosquitto_disconnect(mosq);
    mosquitto_destroy(mosq);
    mosquitto_lib_cleanup();
    return 0;
}
