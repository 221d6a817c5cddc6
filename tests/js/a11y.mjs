// Accessibility basics of one page, run inside the page (Playwright's
// page.evaluate): every control has a name, images have text, text has
// enough contrast (WCAG 2 AA: 4.5:1, 3:1 for large text), one h1, a
// language. Returns a list of problems (empty: passes).
export function audit() {
  const problems = [];
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    const cs = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && cs.visibility !== "hidden" && cs.display !== "none" && !el.closest("[hidden], dialog:not([open])");
  };
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + (el.className && typeof el.className === "string" ? "." + el.className.split(" ").join(".") : "") + ' "' + (el.textContent || "").trim().slice(0, 30) + '"';
  const nameOf = (el) => {
    if (el.getAttribute("aria-label")) return el.getAttribute("aria-label");
    const by = el.getAttribute("aria-labelledby");
    if (by) return by.split(" ").map((id) => document.getElementById(id)?.textContent || "").join(" ").trim();
    if (el.labels && el.labels.length) return [...el.labels].map((l) => l.textContent).join(" ").trim();
    if (el.tagName === "IMG") return el.getAttribute("alt");
    return (el.textContent || "").trim() || el.getAttribute("title") || "";
  };

  if (!document.documentElement.lang) problems.push("html has no lang");
  if (!document.title) problems.push("page has no title");
  const h1s = [...document.querySelectorAll("h1")].filter(visible);
  if (h1s.length !== 1) problems.push(`${h1s.length} visible h1 elements`);

  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden" || !visible(el)) continue;
    if (!nameOf(el)) problems.push("control without a label: " + describe(el));
  }
  for (const el of document.querySelectorAll("button, a[href]")) {
    if (!visible(el)) continue;
    if (!nameOf(el)) problems.push("button or link without a name: " + describe(el));
  }
  for (const el of document.querySelectorAll("img")) {
    if (!el.hasAttribute("alt")) problems.push("img without alt: " + el.src);
  }
  for (const el of document.querySelectorAll("svg[role=img]")) {
    if (!nameOf(el)) problems.push("svg image without a name");
  }
  for (const el of document.querySelectorAll(".scroll[tabindex]")) {
    if (!el.getAttribute("aria-label")) problems.push("scrolling region without a name");
  }

  // Contrast of every visible text against the background it sits on.
  const rgba = (s) => { const m = s.match(/[\d.]+/g) || [0, 0, 0, 0]; return m.map(Number).concat(m.length === 3 ? [1] : []); };
  const lum = ([r, g, b]) => { const c = [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]; };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0.5) return c;
    }
    return [255, 255, 255, 1];
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const checked = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || checked.has(el) || !n.textContent.trim() || !visible(el) || el.closest("svg, .sr, noscript")) continue;
    checked.add(el);
    const cs = getComputedStyle(el);
    const fg = rgba(cs.color);
    const opacity = [...(function* () { for (let e = el; e; e = e.parentElement) yield Number(getComputedStyle(e).opacity); })()].reduce((a, b) => a * b, 1);
    if (opacity < 1 || el.closest(":disabled")) continue; // disabled controls are exempt (WCAG 1.4.3)
    const bg = background(el);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(cs.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(cs.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) problems.push(`contrast ${ratio.toFixed(2)}:1 for ${describe(el)}`);
  }
  return problems;
}
