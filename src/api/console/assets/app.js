// The console's shell: a hash router (#/, #/product/NAME,
// #/product/NAME/KEY, #/quarantine, #/sync), the token dialog, and the
// page lifecycle: each page returns a function that stops its timers and
// subscriptions when the operator leaves it.

import { AuthError, getJson, setToken, token } from "./api.js";
import { clear, errorBox, h } from "./ui.js";
import { overview } from "./overview.js";
import { productPage } from "./product.js";
import { entityPage } from "./entity.js";
import { quarantinePage } from "./quarantine.js";
import { syncPage } from "./sync.js";

const main = document.getElementById("main");
const dialog = document.getElementById("token-dialog");
const input = document.getElementById("token-input");
let stop = null;
// Pages shown so far: `data-generation` on <main> (with aria-busy while a
// page loads) says when a page has finished rendering.
let generation = 0;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "product" && parts.length === 2) return () => productPage(main, parts[1]);
  if (parts[0] === "product" && parts.length >= 3) return () => entityPage(main, parts[1], parts.slice(2).join("/"));
  if (parts[0] === "quarantine") return () => quarantinePage(main, parts[1]);
  if (parts[0] === "sync") return () => syncPage(main);
  return () => overview(main);
}

/** Called by pages (through the thrown AuthError) when the node wants a token. */
export function askForToken(reason) {
  document.getElementById("token-reason").textContent = token()
    ? "The node refused this token: " + reason
    : "This node needs a token to show its data (" + reason + ").";
  input.value = "";
  if (!dialog.open) dialog.showModal();
  input.focus();
}

async function show() {
  if (stop) { try { stop(); } catch { /* page already gone */ } stop = null; }
  for (const a of document.querySelectorAll("nav a")) {
    const here = a.getAttribute("href") === "#/" ? /^#?\/?$/.test(location.hash) : location.hash.startsWith(a.getAttribute("href"));
    if (here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  clear(main, h("p", { class: "muted" }, "Loading…"));
  main.setAttribute("aria-busy", "true");
  try {
    const nodeId = document.getElementById("node-id");
    if (!nodeId.textContent) getJson("/status/v1").then((s) => { nodeId.textContent = s.node_id; }, () => {});
    stop = await route()();
  } catch (err) {
    if (err instanceof AuthError) {
      clear(main, h("h1", {}, "Sign in"), h("p", {}, "This node needs a token: ", err.message, "."),
        h("button", { type: "button", onclick: () => askForToken(err.message) }, "Enter a token"));
      askForToken(err.message);
    } else {
      clear(main, errorBox(String(err.message || err)));
    }
  } finally {
    main.setAttribute("aria-busy", "false");
    main.dataset.generation = String(++generation);
  }
}

document.getElementById("token-button").addEventListener("click", () => askForToken("change of token"));
dialog.addEventListener("close", () => {
  if (dialog.returnValue === "save" && input.value.trim()) setToken(input.value.trim());
  else if (dialog.returnValue === "clear") setToken("");
  else return;
  show();
});
window.addEventListener("hashchange", () => { show(); main.focus({ preventScroll: true }); });
window.addEventListener("meshlet-auth", (e) => askForToken(e.detail));
show();
