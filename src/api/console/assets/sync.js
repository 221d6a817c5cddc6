// Sync: what this node owes each upstream, and, on an aggregator, the
// edges it heard from (last seen, lag, what they still hold). Refreshed
// every 5 s.

import { gqlData } from "./api.js";
import { bytes, clear, duration, errorBox, h, num, section, table, when } from "./ui.js";

const QUERY = `{ syncStatus { name pending pendingBytes oldestPendingSeconds lastAck errors dropped refusals waiting }
  syncNodes { id lastSeen lag pending } }`;

export async function syncPage(main) {
  const upstreams = h("div");
  const edges = h("div");
  const problem = h("div");
  async function refresh() {
    const data = await gqlData(QUERY);
    clear(upstreams, data.syncStatus.length
      ? table("Upstreams", [{ label: "Upstream", rowHeader: true }, { label: "Pending", numeric: true }, { label: "Pending bytes", numeric: true }, { label: "Oldest pending" }, { label: "Last ack" }, { label: "Errors", numeric: true }, { label: "Refusals", numeric: true }, { label: "Dropped", numeric: true }, { label: "Waiting" }],
        data.syncStatus.map((u) => [u.name, num(u.pending), bytes(u.pendingBytes), duration(u.oldestPendingSeconds), when(u.lastAck), num(u.errors), num(u.refusals), num(u.dropped), u.waiting || "–"]))
      : h("p", { class: "muted" }, "This node syncs to no upstream."));
    clear(edges, data.syncNodes.length
      ? table("Edges heard from", [{ label: "Edge", rowHeader: true }, { label: "Last seen" }, { label: "Lag" }, { label: "Pending at the edge", numeric: true }],
        data.syncNodes.map((n) => [n.id, when(n.lastSeen), duration(n.lag), num(n.pending)]))
      : h("p", { class: "muted" }, "No edge has synced to this node (it is not an aggregator, or none has sent yet)."));
  }
  clear(main, h("h1", {}, "Sync"), problem, section("Upstreams", upstreams), section("Edges (aggregator)", edges));
  await refresh();
  const timer = setInterval(() => refresh().then(() => clear(problem), (e) => clear(problem, errorBox("Refresh failed: " + e.message))), 5000);
  return () => clearInterval(timer);
}
