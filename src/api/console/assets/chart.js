// A line chart drawn as SVG: the average per window as a line, the
// min..max range as a band, the value range and time span as labels. No
// library: a chart is a few paths.

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function label(n) {
  const a = Math.abs(n);
  return Number(n).toLocaleString("en", { maximumFractionDigits: a >= 100 ? 0 : a >= 1 ? 2 : 4 });
}

function clock(ms) {
  return new Date(ms).toISOString().slice(11, 19) + "Z";
}

/**
 * points: [{ t: ms, min, max, avg }] oldest first; from/to: the window (ms).
 * Returns an <svg> with role="img" and a text description.
 */
export function lineChart({ title, unit, points, from, to }) {
  const W = 600, H = 180, L = 56, R = 8, T = 10, B = 24;
  const desc = points.length
    ? `${title}: ${points.length} windows, from ${label(Math.min(...points.map((p) => p.min)))} to ${label(Math.max(...points.map((p) => p.max)))}${unit ? " " + unit : ""}`
    : `${title}: no values in this window`;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": desc, class: "chart" });
  svg.append(s("title", {}, desc));
  if (!points.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no values in this window"));
    return svg;
  }
  let lo = Math.min(...points.map((p) => p.min));
  let hi = Math.max(...points.map((p) => p.max));
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => L + ((t - from) / Math.max(1, to - from)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  svg.append(s("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "grid" }));
  svg.append(s("line", { x1: L, x2: L, y1: T, y2: H - B, class: "grid" }));
  svg.append(s("text", { x: L - 4, y: T + 8, "text-anchor": "end", class: "axis" }, label(hi)));
  svg.append(s("text", { x: L - 4, y: H - B, "text-anchor": "end", class: "axis" }, label(lo)));
  svg.append(s("text", { x: L, y: H - 6, class: "axis" }, clock(from)));
  svg.append(s("text", { x: W - R, y: H - 6, "text-anchor": "end", class: "axis" }, clock(to)));
  const top = points.map((p) => `${x(p.t).toFixed(1)},${y(p.max).toFixed(1)}`);
  const bottom = points.slice().reverse().map((p) => `${x(p.t).toFixed(1)},${y(p.min).toFixed(1)}`);
  svg.append(s("polygon", { points: top.concat(bottom).join(" "), class: "band" }));
  const line = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.avg).toFixed(1)}`).join(" ");
  svg.append(s("path", { d: line, class: "line" }));
  for (const p of points) svg.append(s("circle", { cx: x(p.t).toFixed(1), cy: y(p.avg).toFixed(1), r: 2.5, class: "dot" }));
  return svg;
}
