// Quarantine: per product, the payloads that failed validation with every
// reason; the raw payload only for roles the node lets see it (they hold
// clear values), and replay (through the current definition) for roles
// that may also write.

import { gql, gqlData, postJson } from "./api.js";
import { clear, errorBox, esc, h, num, section, table, when } from "./ui.js";

const PREVIEW_CHARS = 300;

export async function quarantinePage(main, selected) {
  const { products } = await gqlData(`{ products { name quarantineCount quality { quarantined } } }`);
  const pick = selected && products.some((p) => p.name === selected) ? selected : (products.find((p) => p.quarantineCount > 0) || products[0] || {}).name;
  const list = h("div");
  const report = h("div", { role: "status" });

  async function load(name) {
    clear(report);
    if (!name) { clear(list, h("p", { class: "muted" }, "No product is visible to this role.")); return; }
    const { data, errors } = await gql(`query($p: String!) { quarantine(product: $p, first: 100) {
      totalCount nodes { id quarantinedAt source topic index reasons payload payloadBytes } } }`, { p: name });
    if (!data || !data.quarantine) {
      const count = (products.find((p) => p.name === name) || {}).quarantineCount;
      clear(list, h("p", {}, num(count), " payloads quarantined. ", errors.map((e) => e.message).join("; ")));
      return;
    }
    const q = data.quarantine;
    const option = [...select.options].find((o) => o.value === name);
    if (option) option.textContent = `${name} (${q.totalCount})`;
    const replay = h("button", { type: "button", id: "replay", onclick: async () => {
      replay.disabled = true;
      try {
        const r = await postJson("/quarantine/" + esc(name) + "/replay");
        await load(name);
        clear(report, h("p", { class: "ok-text" }, `Replayed ${r.replayed} of ${r.examined} (${r.records} records written); ${r.still_invalid} still invalid.`));
      } catch (err) {
        clear(report, errorBox("Replay refused: " + err.message));
      } finally { replay.disabled = false; }
    } }, "Replay through the current definition");
    clear(list,
      h("p", {}, h("span", { id: "quarantine-total" }, num(q.totalCount)), " payloads quarantined", q.totalCount > q.nodes.length ? ` (oldest ${q.nodes.length} shown)` : "", ". ", q.totalCount ? replay : null),
      table("Quarantined payloads of " + name,
        [{ label: "When" }, { label: "Source" }, { label: "Reasons" }, { label: "Payload" }],
        q.nodes.map((e) => ({ attrs: { "data-id": e.id }, cells: [
          when(e.quarantinedAt),
          [h("code", {}, e.source), e.topic ? [h("br"), h("code", {}, e.topic)] : null, e.index !== null ? ` record ${e.index}` : ""],
          h("ul", { class: "reasons" }, e.reasons.map((r) => h("li", {}, r))),
          e.payload.length > PREVIEW_CHARS
            ? h("details", {}, h("summary", {}, h("code", {}, e.payload.slice(0, PREVIEW_CHARS) + "…"), ` (${num(e.payloadBytes)} bytes)`), h("pre", {}, e.payload))
            : h("pre", {}, e.payload),
        ] })),
        "The quarantine of this product is empty."));
  }

  const select = h("select", { id: "quarantine-product" },
    products.map((p) => h("option", { value: p.name }, `${p.name} (${p.quarantineCount})`)));
  if (pick) select.value = pick;
  select.addEventListener("change", () => { location.hash = "#/quarantine/" + esc(select.value); });
  clear(main,
    h("h1", {}, "Quarantine"),
    h("p", { class: "controls" }, h("label", { for: "quarantine-product" }, "Product "), select),
    report,
    section("Entries", list));
  await load(pick);
  return () => {};
}
