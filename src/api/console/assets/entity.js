// Entity page: one instance's current values with its _meta, a chart per
// number field over a chosen window (the downsampled `series`: min, max
// and average per window, computed by the node, masks applied), and the
// audit trail (who or what changed it, never values). It follows the
// entity live: a change subscription filtered on its key redraws the page
// (values, charts, audit) without a reload; a role that may not subscribe
// gets a refresh every 5 s instead, as on the product page.

import { gqlData, subscribe } from "./api.js";
import { lineChart } from "./chart.js";
import { badge, clear, dl, errorBox, esc, h, lowerFirst, num, section, table, value, when } from "./ui.js";

const PRODUCT = `query($name: String!) { product(name: $name) {
  name key graphqlType fields { name type graphqlType unit } } }`;

/** Windows offered: span and bucket width (at most 120 buckets each). */
const WINDOWS = [
  ["15m", 15 * 60, "15s"],
  ["1h", 3600, "1m"],
  ["6h", 6 * 3600, "5m"],
  ["24h", 86400, "15m"],
  ["7d", 7 * 86400, "2h"],
];

export async function entityPage(main, name, key) {
  const { product: p } = await gqlData(PRODUCT, { name });
  if (!p) {
    clear(main, errorBox("No product named " + name + " is visible to this role."));
    return () => {};
  }
  const keyField = p.fields.find((f) => f.name === p.key);
  const numbers = p.fields.filter((f) => f.type === "int" || f.type === "float");
  const others = p.fields.filter((f) => f.name !== p.key);
  const root = lowerFirst(p.graphqlType);
  const stats = numbers.map((f) => `${f.name} { min max avg }`).join(" ");
  const query = `query($key: ${keyField.graphqlType}!, $since: DateTime!, $until: DateTime!, $every: Duration!) {
    it: ${root}(${p.key}: $key) {
      ${p.fields.map((f) => f.name).join(" ")}
      _meta { version firstSeen lastSeen eventTime source actor stale }
      ${numbers.length ? `series(since: $since, until: $until, every: $every) { start end count values { ${stats} } }` : ""}
      audit(first: 100) { action firstAt lastAt fromVersion toVersion count fields source actor }
    } }`;

  const windowSelect = h("select", { id: "window" }, WINDOWS.map(([label]) => h("option", { value: label }, "last " + label)));
  windowSelect.value = sessionStorage.getItem("meshlet.console.window") || "1h";
  const body = h("div");
  const keyValue = keyField.type === "int" ? String(key) : key;
  const changes = `subscription($filter: ${p.graphqlType}Filter) { change: ${root}Changes(filter: $filter) { entity } }`;
  const live = h("span", { id: "entity-live", class: "muted" }, "connecting…");

  async function load() {
    const [, span, every] = WINDOWS.find((w) => w[0] === windowSelect.value) || WINDOWS[1];
    const to = Date.now();
    const from = to - span * 1000;
    const data = await gqlData(query, {
      key: keyValue,
      since: new Date(from).toISOString(), until: new Date(to).toISOString(), every,
    });
    const it = data.it;
    if (!it) {
      clear(body, errorBox("No instance " + key + " of " + name + " is visible to this role."));
      return;
    }
    const m = it._meta;
    const charts = numbers.map((f) => {
      const points = (it.series || [])
        .filter((b) => b.values[f.name])
        .map((b) => ({ t: (Date.parse(b.start) + Date.parse(b.end)) / 2, ...b.values[f.name] }));
      return h("figure", { class: "chart-box", "data-field": f.name },
        h("figcaption", {}, f.name, f.unit ? ` (${f.unit})` : "", " — average per window, band min to max"),
        lineChart({ title: f.name, unit: f.unit, points, from, to }));
    });
    const audit = it.audit.slice().reverse();
    clear(body,
      section("Current values",
        table("Current values of " + key, [{ label: "Field", rowHeader: true }, { label: "Value" }, { label: "Unit" }],
          others.map((f) => [f.name, value(it[f.name]), f.unit || ""])),
        dl([
          ["Version", num(m.version)], ["First seen", when(m.firstSeen)], ["Last seen", when(m.lastSeen)],
          ["Event time", when(m.eventTime)], ["Source", h("code", {}, m.source)], ["Actor", m.actor || "–"],
          ["Freshness", m.stale ? badge("stale", "bad") : badge("fresh", "ok")],
        ])),
      numbers.length ? section("Charts", h("div", { class: "charts" }, charts)) : null,
      section("Audit trail",
        table("Audit trail of " + key, [{ label: "Action" }, { label: "When" }, { label: "Versions" }, { label: "Changes", numeric: true }, { label: "Fields" }, { label: "Source" }, { label: "Actor" }],
          audit.map((a) => [a.action.toLowerCase(), when(a.lastAt), a.fromVersion === a.toVersion ? String(a.toVersion) : `${a.fromVersion}–${a.toVersion}`, num(a.count), a.fields.join(", "), h("code", {}, a.source), a.actor || "–"]),
          "No audit line yet.")));
  }

  windowSelect.addEventListener("change", () => {
    try { sessionStorage.setItem("meshlet.console.window", windowSelect.value); } catch { /* off */ }
    load().catch((e) => clear(body, errorBox(e.message)));
  });
  clear(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Overview"), " / ", h("a", { href: "#/product/" + esc(name) }, name), " / ", key),
    h("h1", {}, key),
    h("p", { class: "controls" }, h("label", { for: "window" }, "Chart window "), windowSelect,
      " ", h("button", { type: "button", class: "quiet", onclick: () => load().catch((e) => clear(body, errorBox(e.message))) }, "Refresh"),
      " ", live),
    body);
  await load();

  // Live: each change of this entity redraws the page, at most one redraw
  // in flight and bursts coalesced.
  let reloadTimer = null;
  let poll = null;
  const reload = () => load().catch((e) => clear(body, errorBox(e.message)));
  const close = subscribe(changes, { filter: { [p.key]: { eq: keyValue } } }, () => {
    live.textContent = "live";
    if (!reloadTimer) reloadTimer = setTimeout(() => { reloadTimer = null; reload(); }, 200);
  }, (message) => {
    live.textContent = "no live updates (" + message + "): refreshed every 5 s";
    if (!poll) poll = setInterval(() => { if (!document.hidden) reload(); }, 5000);
  });
  // Until the first change arrives, say the subscription is open.
  const opened = setTimeout(() => { if (live.textContent === "connecting…") live.textContent = "live"; }, 1500);
  return () => {
    close();
    clearTimeout(opened);
    if (reloadTimer) clearTimeout(reloadTimer);
    if (poll) clearInterval(poll);
  };
}
