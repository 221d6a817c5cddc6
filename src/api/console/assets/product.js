// Product page: the contract at a glance (description, owner, domain,
// fields with types, units and classification, sources, quality and sync
// rules, roles), the ODCS contract to download, and a live table of
// instances: filtered and sorted by the node (the Relay connection),
// updated by the change subscription without reloading.

import { gql, gqlData, subscribe } from "./api.js";
import { badge, clear, dl, errorBox, esc, h, lowerFirst, num, section, table, value, when } from "./ui.js";

const PRODUCT = `query($name: String!) { product(name: $name) {
  name version domain owner description key graphqlType entities quarantineCount
  freshness { sla lastUpdate stale }
  quality { accepted rejected quarantined duplicates }
  fields { name type graphqlType unit classification required description }
  contract(format: JSON) } }`;

const PAGE = 50;
const NUMERIC = new Set(["int", "float"]);

/** The operators a filter offers per field, as GraphQL filter keys (an
 *  `enum:` field is a GraphQL enum: equality only, by its GraphQL name). */
function operators(field) {
  const type = field.type;
  if (type === "string" && field.graphqlType !== "String") return [["eq", "="], ["ne", "≠"]];
  if (type === "string") return [["contains", "contains"], ["eq", "="], ["ne", "≠"]];
  if (NUMERIC.has(type) || type === "timestamp") return [["eq", "="], ["gt", ">"], ["gte", "≥"], ["lt", "<"], ["lte", "≤"]];
  if (type === "bool") return [["eq", "="]];
  return [];
}

function coerce(type, text) {
  if (type === "int") return /^-?\d+$/.test(text) ? text : NaN;
  if (type === "float") return Number(text);
  if (type === "bool") return text === "true";
  return text;
}

export async function productPage(main, name) {
  const data = await gqlData(PRODUCT, { name });
  const p = data.product;
  if (!p) {
    clear(main, h("h1", {}, name), errorBox("No product named " + name + " is visible to this role."));
    return () => {};
  }
  let contract = {};
  try { contract = JSON.parse(p.contract); } catch { /* shown raw below */ }
  const custom = Object.fromEntries((contract.customProperties || []).map((c) => [c.property, c.value]));
  const schema = (contract.schema || [])[0] || {};
  const propertyRules = Object.fromEntries((schema.properties || []).map((prop) => [prop.name, (prop.quality || []).map((q) => q.description).filter(Boolean)]));

  const contractUrl = URL.createObjectURL(new Blob([p.contract], { type: "application/json" }));
  const download = h("a", { href: contractUrl, download: p.name + ".odcs.json", class: "button" }, "Download ODCS contract (JSON)");
  const yamlLink = h("button", { type: "button", class: "quiet" , onclick: async () => {
    const y = await gqlData(`query($name: String!) { product(name: $name) { contract } }`, { name });
    const a = h("a", { href: URL.createObjectURL(new Blob([y.product.contract], { type: "application/yaml" })), download: p.name + ".odcs.yaml" });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } }, "YAML");

  const fieldsTable = table("Fields of " + p.name,
    [{ label: "Field", rowHeader: true }, { label: "Type" }, { label: "Unit" }, { label: "Classification" }, { label: "Rules" }, { label: "Description" }],
    p.fields.map((f) => [
      [f.name, f.name === p.key ? [" ", badge("key")] : null, f.required ? [" ", badge("required")] : null],
      f.type, f.unit || "–", f.classification === "pii" ? badge("pii", "warn") : f.classification,
      (propertyRules[f.name] || []).join("; ") || "–", f.description || "–",
    ]));

  const sources = (custom.sources || []).map((s) => h("li", {}, Object.entries(s).map(([k, v]) => [h("strong", {}, k), " ", h("code", {}, String(v))])));
  const qualityRules = (schema.quality || []).map((q) => h("li", {}, q.description || q.name));
  const syncRules = (custom.sync || []).map((r) => h("li", {}, "to ", h("strong", {}, r.to), r.priority ? ` (${r.priority} priority)` : "", r.fields ? ": " + r.fields.join(", ") : "", r.where ? [" where ", h("code", {}, r.where)] : ""));
  const roles = (contract.roles || []).map((r) => h("li", {}, h("strong", {}, r.role), ": ", r.access, r.description ? " — " + r.description : ""));
  const sla = (contract.slaProperties || []).map((s) => h("li", {}, `${s.property}${s.element ? " (" + s.element + ")" : ""}: ${s.value}${s.unit || ""}`, s.description ? " — " + s.description : ""));
  const list = (items, none) => (items.length ? h("ul", {}, items) : h("p", { class: "muted" }, none));

  // The live instance table.
  const fields = p.fields.filter((f) => f.type !== "json");
  const columns = [p.fields.find((f) => f.name === p.key)].concat(p.fields.filter((f) => f.name !== p.key)).filter(Boolean);
  const selection = columns.map((f) => f.name).join(" ") + " _meta { lastSeen stale version }";
  const root = lowerFirst(p.graphqlType);
  const connectionQuery = `query($first: Int, $after: String, $filter: ${p.graphqlType}Filter, $orderBy: [${p.graphqlType}Order!]) {
    page: ${root}Connection(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
      totalCount pageInfo { hasNextPage endCursor } nodes { ${selection} } } }`;
  const changes = `subscription($filter: ${p.graphqlType}Filter) { change: ${root}Changes(filter: $filter) {
    entity created instance { ${selection} } } }`;

  let order = null; // { field, direction }
  let filter = null;
  let cursor = null;
  const rows = new Map();
  const tbody = h("tbody");
  const total = h("span", { id: "instance-total" }, "–");
  const live = h("span", { id: "live-state", class: "muted" }, "connecting…");
  const more = h("button", { type: "button", class: "quiet", hidden: true, onclick: () => load(true) }, "Load more");
  const tableError = h("div");

  const headerCells = [...columns.map((f) => f.name), "last seen"].map((label, i) => {
    const f = columns[i];
    const sortable = f && f.type !== "json";
    const th = h("th", { scope: "col", class: f && NUMERIC.has(f.type) ? "num" : "" });
    if (sortable) {
      th.append(h("button", { type: "button", class: "sort", onclick: () => {
        order = order && order.field === f.name && order.direction === "ASC" ? { field: f.name, direction: "DESC" } : { field: f.name, direction: "ASC" };
        for (const other of headerCells) other.removeAttribute("aria-sort");
        th.setAttribute("aria-sort", order.direction === "ASC" ? "ascending" : "descending");
        load(false);
      } }, label, h("span", { "aria-hidden": "true", class: "arrow" }, " ↕")));
    } else th.append(label);
    return th;
  });

  function rowOf(node) {
    const key = String(node[p.key]);
    let tr = rows.get(key);
    const cells = [
      h("a", { href: "#/product/" + esc(p.name) + "/" + esc(key) }, key),
      ...columns.slice(1).map((f) => value(node[f.name])),
      [when(node._meta.lastSeen), node._meta.stale ? [" ", badge("stale", "bad")] : null],
    ];
    const fresh = h("tr", { "data-key": key }, cells.map((c, i) => h(i ? "td" : "th", { scope: i ? null : "row", class: columns[i] && NUMERIC.has(columns[i].type) ? "num" : "" }, c)));
    if (tr) { tr.replaceWith(fresh); }
    rows.set(key, fresh);
    return fresh;
  }

  async function load(append) {
    if (!append) cursor = null;
    const { data: page, errors } = await gql(connectionQuery, { first: PAGE, after: cursor, filter, orderBy: order ? [order] : null });
    clear(tableError, errors.length ? errorBox(errors.map((e) => e.message).join("; ")) : null);
    if (!page) return;
    if (!append) { tbody.replaceChildren(); rows.clear(); }
    for (const node of page.page.nodes) tbody.append(rowOf(node));
    if (!tbody.children.length) tbody.append(h("tr", {}, h("td", { colspan: columns.length + 1, class: "muted" }, "No instance matches.")));
    total.textContent = num(page.page.totalCount);
    cursor = page.page.pageInfo.endCursor;
    more.hidden = !page.page.pageInfo.hasNextPage;
  }

  // Filter form.
  const fieldSelect = h("select", { id: "filter-field" }, h("option", { value: "" }, "(no filter)"), fields.filter((f) => operators(f).length).map((f) => h("option", { value: f.name }, f.name)));
  const opSelect = h("select", { id: "filter-op" });
  const valueInput = h("input", { id: "filter-value", type: "text", autocomplete: "off" });
  function fillOps() {
    const f = fields.find((x) => x.name === fieldSelect.value);
    clear(opSelect, (f ? operators(f) : []).map(([k, label]) => h("option", { value: k }, label)));
    opSelect.disabled = !f;
    valueInput.disabled = !f;
  }
  fieldSelect.addEventListener("change", fillOps);
  fillOps();
  const form = h("form", { class: "filter", onsubmit: (e) => {
    e.preventDefault();
    const f = fields.find((x) => x.name === fieldSelect.value);
    filter = f && valueInput.value !== "" ? { [f.name]: { [opSelect.value]: coerce(f.type, valueInput.value) } } : null;
    load(false).then(restart);
  } },
  h("label", { for: "filter-field" }, "Filter on"), fieldSelect,
  h("label", { for: "filter-op", class: "sr" }, "Comparison"), opSelect,
  h("label", { for: "filter-value", class: "sr" }, "Value"), valueInput,
  h("button", { type: "submit" }, "Apply"));

  let reloadTimer = null;
  let poll = null;
  let close = () => {};
  function restart() {
    close();
    if (poll) { clearInterval(poll); poll = null; }
    live.textContent = "connecting…";
    close = subscribe(changes, { filter }, (d) => {
      live.textContent = "live";
      const c = d.change;
      const tr = rows.get(String(c.entity));
      if (tr) {
        const updated = rowOf(c.instance);
        updated.classList.add("flash");
      } else if (!reloadTimer) {
        reloadTimer = setTimeout(() => { reloadTimer = null; load(false); }, 300);
      }
    }, (message) => {
      // A role without the subscribe right (or a lost socket): poll instead.
      live.textContent = "no live updates (" + message + "): refreshed every 5 s";
      if (!poll) poll = setInterval(() => { if (!document.hidden) load(false); }, 5000);
    });
    // Until the first change arrives, say the subscription is open.
    setTimeout(() => { if (live.textContent === "connecting…") live.textContent = "live"; }, 1500);
  }

  clear(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Overview"), " / ", p.name),
    h("h1", {}, p.name, " ", h("span", { class: "muted small" }, "v" + p.version)),
    p.description ? h("p", { class: "lead" }, p.description) : null,
    dl([
      ["Domain", p.domain], ["Owner", p.owner], ["Entity key", p.key],
      ["Entities", num(p.entities)],
      ["Freshness SLA", p.freshness.sla ? [p.freshness.sla, " ", p.freshness.stale ? badge("stale", "bad") : badge("fresh", "ok")] : "none"],
      ["Last update", when(p.freshness.lastUpdate)],
      ["Since start", `${num(p.quality.accepted)} accepted, ${num(p.quality.rejected)} rejected, ${num(p.quality.quarantined)} quarantined, ${num(p.quality.duplicates)} duplicates`],
      ["Quarantine now", h("a", { href: "#/quarantine/" + esc(p.name) }, num(p.quarantineCount))],
    ]),
    h("p", {}, download, " ", yamlLink),
    section("Instances",
      form,
      h("p", { class: "muted" }, "Matching: ", total, " · ", live),
      tableError,
      h("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": "Instances of " + p.name },
        h("table", { id: "instances" }, h("caption", { class: "sr" }, "Instances of " + p.name), h("thead", {}, h("tr", {}, headerCells)), tbody)),
      more),
    section("Fields", fieldsTable),
    section("Sources", list(sources, "No source: written through GraphQL only.")),
    section("Quality rules", list(qualityRules, "No product-wide rule."), h("p", { class: "muted" }, "Per-field rules are in the Fields table.")),
    section("Sync rules", list(syncRules, "Not synced upstream.")),
    section("Roles", list(roles, "No role has rights.")),
    section("Service levels", list(sla, "None declared.")));
  await load(false);
  restart();
  return () => {
    close();
    if (reloadTimer) clearTimeout(reloadTimer);
    if (poll) clearInterval(poll);
    URL.revokeObjectURL(contractUrl);
  };
}
