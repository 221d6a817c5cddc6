// Overview: the node (id, version, uptime, readiness problems, memory,
// store size), every product the caller's role may see with its live
// ingest rate, broker and HTTP connections, and sync per upstream.
// Refreshed every 2 s in place while the tab is visible (rows keep their
// elements, so keyboard focus stays where it was).

import { AuthError, getJson, gqlData, metrics, sum } from "./api.js";
import { badge, bytes, clear, dl, duration, errorBox, esc, h, num, section, table, when } from "./ui.js";

const QUERY = `{
  products { name domain quarantineCount
    freshness { lastUpdate stale sla }
    quality { accepted rejected quarantined duplicates } }
  syncStatus { name pending pendingBytes oldestPendingSeconds lastAck errors dropped waiting }
}`;

const REFRESH_MS = 2000;

// `entities` walks a product's keys on the node (O(n)): counted at start,
// then at most every 5 s while records arrive, else every minute, so an
// open overview does not keep a large store's CPU busy.
const COUNTS = `{ products { name entities } }`;
const COUNT_MIN_MS = 5000;
const COUNT_MAX_MS = 60000;

export async function overview(main) {
  const nodeBox = h("div");
  const productsBox = h("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": "Products" });
  const connectionsBox = h("div");
  const syncBox = h("div");
  const problem = h("div");
  const title = h("h1", {}, "Overview");
  let previous = null;
  const rows = new Map();
  let counts = { at: -Infinity, activity: -1, entities: new Map() };

  const productTable = h("table", { id: "products" },
    h("caption", { class: "sr" }, "Products on this node"),
    h("thead", {}, h("tr", {},
      ["Product", "Entities", "Ingest /s", "Accepted", "Rejected", "Quarantined", "Quarantine now", "Freshness", "Last update"]
        .map((label, i) => h("th", { scope: "col", class: i && i < 7 ? "num" : "" }, label)))),
    h("tbody"));
  productsBox.append(productTable);

  function productRow(p) {
    let row = rows.get(p.name);
    if (!row) {
      const cells = Array.from({ length: 8 }, (_, i) => h("td", { class: i < 6 ? "num" : "" }));
      const tr = h("tr", { "data-product": p.name },
        h("th", { scope: "row" }, h("a", { href: "#/product/" + esc(p.name) }, p.name), " ", h("span", { class: "muted small" }, p.domain)),
        cells);
      row = { tr, cells };
      rows.set(p.name, row);
    }
    return row;
  }

  async function refresh() {
    const [data, status, samples] = await Promise.all([gqlData(QUERY), getJson("/status/v1"), metrics()]);
    const now = performance.now();
    const activity = data.products.reduce((a, p) => a + p.quality.accepted + p.quality.rejected + p.quality.quarantined, 0);
    const age = now - counts.at;
    if (age >= COUNT_MAX_MS || (activity !== counts.activity && age >= COUNT_MIN_MS)) {
      const fresh = await gqlData(COUNTS);
      counts = { at: now, activity, entities: new Map(fresh.products.map((p) => [p.name, p.entities])) };
    }
    clear(problem);
    title.textContent = "Node " + status.node_id;
    document.getElementById("node-id").textContent = status.node_id;
    clear(nodeBox, dl([
      ["Version", status.version],
      ["Up", duration(Date.now() / 1000 - status.started_at)],
      ["State", badge(status.readiness.phase, status.readiness.phase === "ready" ? "ok" : "warn")],
      ["Problems", status.readiness.problems.length ? h("ul", { class: "problems" }, status.readiness.problems.map((p) => h("li", {}, p))) : "none"],
      ["Memory (resident)", bytes(status.memory_rss_bytes)],
      ["Store on disk", bytes(status.store.bytes_on_disk)],
      ["Sync outbox", bytes(status.sync.upstreams.reduce((a, u) => a + u.pending_bytes, 0)) + " pending"],
    ]));

    const tbody = productTable.tBodies[0];
    const seen = new Set();
    const dt = previous ? (now - previous.at) / 1000 : 0;
    for (const p of data.products) {
      seen.add(p.name);
      const { tr, cells } = productRow(p);
      const accepted = sum(samples, "meshlet_ingest_records_total", { product: p.name, outcome: "accepted" });
      const before = previous && previous.accepted.get(p.name);
      const rate = dt > 0 && before !== undefined ? Math.max(0, accepted - before) / dt : null;
      const texts = [num(counts.entities.get(p.name)), rate === null ? "–" : num(rate, 1), num(p.quality.accepted), num(p.quality.rejected), num(p.quality.quarantined), num(p.quarantineCount)];
      texts.forEach((t, i) => { if (cells[i].textContent !== t) cells[i].textContent = t; });
      cells[1].setAttribute("data-rate", rate === null ? "" : String(rate));
      clear(cells[6], p.freshness.sla ? (p.freshness.stale ? badge("stale", "bad") : badge("fresh", "ok")) : h("span", { class: "muted" }, "no SLA"));
      clear(cells[7], when(p.freshness.lastUpdate));
      if (tr.parentNode !== tbody) tbody.append(tr);
    }
    for (const [name, row] of rows) if (!seen.has(name)) { row.tr.remove(); rows.delete(name); }
    if (!data.products.length && !tbody.querySelector(".empty")) {
      tbody.append(h("tr", { class: "empty" }, h("td", { colspan: 9, class: "muted" }, "No product is visible to this role. Enter a token with more rights (Token, top right).")));
    } else if (data.products.length) {
      const empty = tbody.querySelector(".empty");
      if (empty) empty.remove();
    }
    previous = { at: now, accepted: new Map(data.products.map((p) => [p.name, sum(samples, "meshlet_ingest_records_total", { product: p.name, outcome: "accepted" })])) };

    const broker = samples.meshlet_broker_connections;
    clear(connectionsBox, dl([
      broker && ["Embedded MQTT broker", num(sum(samples, "meshlet_broker_connections")) + " clients connected"],
      (sum(samples, "meshlet_mqtt_client_connects_total") + sum(samples, "meshlet_mqtt_client_errors_total") > 0) && ["External MQTT broker", num(sum(samples, "meshlet_mqtt_client_connects_total")) + " connects, " + num(sum(samples, "meshlet_mqtt_client_errors_total")) + " errors since start"],
      ["HTTP", num(sum(samples, "meshlet_http_connections")) + " connections open"],
    ]));

    const upstreams = data.syncStatus;
    const focused = syncBox.contains(document.activeElement);
    clear(syncBox, upstreams.length
      ? table("Sync per upstream",
        [{ label: "Upstream", rowHeader: true }, { label: "Pending", numeric: true }, { label: "Pending bytes", numeric: true }, { label: "Oldest pending" }, { label: "Last ack" }, { label: "Errors", numeric: true }, { label: "Dropped", numeric: true }, { label: "Waiting" }],
        upstreams.map((u) => [u.name, num(u.pending), bytes(u.pendingBytes), duration(u.oldestPendingSeconds), when(u.lastAck), num(u.errors), num(u.dropped), u.waiting || "–"]))
      : h("p", { class: "muted" }, "No upstream is configured."));
    if (focused) syncBox.querySelector(".scroll")?.focus();
  }

  clear(main, title, problem,
    section("Node", nodeBox),
    section("Products", productsBox),
    section("Connections", connectionsBox),
    section("Sync", syncBox));
  await refresh();
  let busy = false;
  const timer = setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await refresh(); } catch (err) {
      if (err instanceof AuthError) window.dispatchEvent(new CustomEvent("meshlet-auth", { detail: err.message }));
      clear(problem, errorBox("Refresh failed: " + (err.message || err)));
    } finally { busy = false; }
  }, REFRESH_MS);
  return () => clearInterval(timer);
}
