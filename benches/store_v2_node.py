#!/usr/bin/env python3
"""Store v2 through the node: the scenario of issue 24's "Why", old against new.

Each run starts a real `meshlet serve` on the embedded default (no config
file: data under ./meshlet-data, the products of ./schema/examples, one
parked upstream), creates an admin token, pushes MACHINES x READINGS
`machine_health` records as NDJSON over `POST /ingest/machine_health` in
batches of BATCH records (each batch is one round: every machine's next
reading), waits IDLE_SECS, stops the node with SIGTERM and reads:

- node CPU per record: utime+stime from /proc/<pid>/stat, from ready to
  the last 200 (the ingest window), and from ready to exit (wait4's
  rusage: the checkpoints and the flush at stop included);
- bytes written to disk: write_bytes of /proc/<pid>/io at ready against
  wait4's ru_oublock x 512 at exit (the same kernel counter), per raw
  payload byte (the NDJSON bodies);
- data dir size (sum of file sizes) after the clean stop, per raw byte;
- RSS: VmHWM at the end of the ingest window (the peak), VmRSS after
  IDLE_SECS of idle.

Binaries alternate (old, new, old, new, ...) so both see the same machine
state; the summary is the median of RUNS per binary and new/old.

Usage: store_v2_node.py LABEL=BINARY [LABEL=BINARY ...]
Env: RUNS (3), MACHINES (1000), READINGS (200), BATCH (1000), IDLE_SECS (10),
EXAMPLES (schema/examples of this repository).
"""

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RUNS = int(os.environ.get("RUNS", "3"))
MACHINES = int(os.environ.get("MACHINES", "1000"))
READINGS = int(os.environ.get("READINGS", "200"))
BATCH = int(os.environ.get("BATCH", "1000"))
IDLE_SECS = float(os.environ.get("IDLE_SECS", "10"))
EXAMPLES = os.environ.get("EXAMPLES", os.path.join(REPO, "schema", "examples"))
TICK = os.sysconf("SC_CLK_TCK")
SITES = ["berlin", "lyon", "brno"]
STATUSES = ["ok", "ok", "ok", "ok", "warn", "ok", "ok", "fault", "ok", "maintenance"]


def bodies():
    """NDJSON bodies of BATCH records, round after round (deterministic)."""
    lines = []
    for r in range(READINGS):
        for m in range(MACHINES):
            x = (r * 7919 + m * 104729) % 10007
            record = {
                "machine_id": "PR-%04d" % m,
                "site": SITES[m % 3],
                "line": "L%d" % (m % 12),
                "temperature_c": round(40 + (x % 600) / 10, 1),
                "vibration_rms": round((x % 250) / 50, 2),
                "spindle_rpm": 800 + x % 2200,
                "status": STATUSES[(x // 7) % len(STATUSES)],
                "reported_at": "2026-12-07T%02d:%02d:%02d.%03dZ"
                % (r // 3600 % 24, r // 60 % 60, r % 60, m % 1000),
            }
            lines.append(json.dumps(record, separators=(",", ":")))
    out = []
    for i in range(0, len(lines), BATCH):
        out.append(("\n".join(lines[i : i + BATCH]) + "\n").encode())
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_field(pid, name, path):
    with open("/proc/%d/%s" % (pid, path)) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def request(port, method, path, body=None, headers=None, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(port, proc, deadline_s=60):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("node exited before ready: %s" % proc.returncode)
        try:
            status, _ = request(port, "GET", "/readyz", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("node not ready within %ss" % deadline_s)


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def one_run(binary, payloads):
    raw = sum(len(p) for p in payloads)
    work = tempfile.mkdtemp(prefix="store-v2-node-")
    try:
        shutil.copytree(EXAMPLES, os.path.join(work, "schema", "examples"))
        http_port, mqtt_port = free_port(), free_port()
        env = dict(os.environ)
        env.update(
            {
                "MESHLET_HTTP__LISTEN": "127.0.0.1:%d" % http_port,
                "MESHLET_MQTT__EMBEDDED__LISTEN": "127.0.0.1:%d" % mqtt_port,
                "MESHLET_LOG__LEVEL": "warn",
            }
        )
        token = subprocess.run(
            [binary, "token", "create", "--role", "admin", "--name", "bench"],
            cwd=work, env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        log = open(os.path.join(work, "node.log"), "w")
        proc = subprocess.Popen([binary, "serve"], cwd=work, env=env, stdout=log, stderr=log)
        try:
            wait_ready(port=http_port, proc=proc)
            pid = proc.pid
            cpu0 = cpu_seconds(pid)
            with open("/proc/%d/io" % pid) as f:
                io = dict(line.split(": ") for line in f.read().splitlines())
            wb0 = int(io["write_bytes"])
            peak = [0]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], proc_field(pid, "VmRSS", "status"))
                    except (OSError, KeyError):
                        return
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            headers = {
                "Authorization": "Bearer " + token,
                "Content-Type": "application/x-ndjson",
            }
            t0 = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=300)
            for body in payloads:
                conn.request("POST", "/ingest/machine_health", body=body, headers=headers)
                resp = conn.getresponse()
                text = resp.read()
                if resp.status != 200:
                    raise RuntimeError("push refused: %d %s" % (resp.status, text[:400]))
            conn.close()
            wall = time.monotonic() - t0
            cpu_ingest = cpu_seconds(pid) - cpu0
            stop.set()
            sampler.join()
            hwm_kib = proc_field(pid, "VmHWM", "status")
            query = json.dumps({"query": "{ machineHealthConnection(first: 1) { totalCount } }"})
            status, answer = request(
                http_port, "POST", "/graphql", body=query,
                headers={"Content-Type": "application/json", "Authorization": "Bearer " + token},
            )
            count = json.loads(answer)["data"]["machineHealthConnection"]["totalCount"]
            if count != MACHINES:
                raise RuntimeError("expected %d machines, the node has %s" % (MACHINES, count))
            time.sleep(IDLE_SECS)  # the measured idle period, not a wait for a condition
            idle_kib = proc_field(pid, "VmRSS", "status")
            proc.send_signal(signal.SIGTERM)
            _, wstatus, usage = os.wait4(pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(wstatus)
            if proc.returncode != 0:
                raise RuntimeError("node exited with %s" % proc.returncode)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            log.close()
        cpu_total = usage.ru_utime + usage.ru_stime - cpu0
        written = usage.ru_oublock * 512 - wb0
        data = dir_bytes(os.path.join(work, "meshlet-data"))
        records = MACHINES * READINGS
        return {
            "records_per_s": records / wall,
            "cpu_us_per_record_ingest": cpu_ingest / records * 1e6,
            "cpu_us_per_record_to_stop": cpu_total / records * 1e6,
            "written_bytes": written,
            "written_per_raw": written / raw,
            "data_dir_bytes": data,
            "data_dir_per_raw": data / raw,
            "rss_peak_mib": max(peak[0], hwm_kib) / 1024,
            "rss_idle_mib": idle_kib / 1024,
        }
    except Exception:
        log_path = os.path.join(work, "node.log")
        if os.path.exists(log_path):
            sys.stderr.write(open(log_path).read()[-4000:])
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    binaries = [arg.split("=", 1) for arg in sys.argv[1:]]
    if not binaries or any(len(b) != 2 for b in binaries):
        sys.exit(__doc__)
    binaries = [(label, os.path.abspath(binary)) for label, binary in binaries]
    payloads = bodies()
    raw = sum(len(p) for p in payloads)
    print(
        "%d records (%d machines x %d readings), %d bodies of %d records, raw NDJSON %d bytes (%.1f B/record)"
        % (MACHINES * READINGS, MACHINES, READINGS, len(payloads), BATCH, raw, raw / (MACHINES * READINGS)),
        flush=True,
    )
    results = {label: [] for label, _ in binaries}
    for run in range(RUNS):
        for label, binary in binaries:
            r = one_run(binary, payloads)
            results[label].append(r)
            print(
                "run %d %-4s %s" % (run + 1, label, " ".join("%s=%.4g" % kv for kv in r.items())),
                flush=True,
            )
    print("\nmedians of %d run(s):" % RUNS)
    keys = list(results[binaries[0][0]][0].keys())
    labels = [label for label, _ in binaries]
    print("%-28s" % "figure" + "".join("%14s" % l for l in labels)
          + ("%14s" % ("%s/%s" % (labels[-1], labels[0])) if len(labels) > 1 else ""))
    for key in keys:
        meds = [statistics.median(r[key] for r in results[l]) for l in labels]
        row = "%-28s" % key + "".join("%14.4g" % m for m in meds)
        if len(labels) > 1 and meds[0]:
            row += "%14.3f" % (meds[-1] / meds[0])
        print(row)


if __name__ == "__main__":
    main()
