// Small DOM helpers and formatters shared by the pages. Text always goes
// in as text nodes (never innerHTML), so values from devices cannot inject
// markup.

/** h("a", { href: "#/" }, "text", child) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function esc(s) { return encodeURIComponent(s); }

export function num(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en", { maximumFractionDigits: digits });
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return num(n, i ? 1 : 0) + " " + units[i];
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

export function ago(iso) {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  return duration((Date.now() - t) / 1000) + " ago";
}

/** A <time> showing "3m ago" with the exact time as its title. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "never");
  return h("time", { datetime: iso, title: iso }, ago(iso));
}

export function value(v) {
  if (v === null || v === undefined) return h("span", { class: "muted" }, "–");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function badge(text, kind) { return h("span", { class: "badge " + (kind || "") }, text); }

/** A section with a heading. */
export function section(title, ...children) {
  const id = "s-" + title.toLowerCase().replace(/[^a-z0-9]+/g, "-");
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

/**
 * A table in a horizontally scrolling box (narrow screens), with a caption
 * for screen readers. columns: [{ label, numeric, sort }]; rows: arrays of cells.
 */
export function table(caption, columns, rows, empty = "Nothing yet.") {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.numeric ? "num" : "", "aria-sort": c.ariaSort }, c.header || c.label)));
  const body = rows.length
    ? rows.map((r) => h("tr", r.attrs || {}, (r.cells || r).map((cell, i) => h((columns[i] && columns[i].rowHeader) ? "th" : "td", { class: columns[i] && columns[i].numeric ? "num" : "", scope: (columns[i] && columns[i].rowHeader) ? "row" : null }, cell))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty))];
  return h("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": caption },
    h("table", {}, h("caption", { class: "sr" }, caption), h("thead", {}, head), h("tbody", {}, body)));
}

export function errorBox(message) { return h("p", { class: "error", role: "alert" }, message); }

export function dl(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function lowerFirst(s) { return s.charAt(0).toLowerCase() + s.slice(1); }
