// Drives the web console (issue 28) in headless Chromium against the
// real node, with every request but the node's own refused: tests/it/console.rs
// starts the node and runs `node console.mjs '<json>'` with
//   { url, mqttPort, adminToken, readerToken, analystToken, productsDir,
//     products, edge, outDir }
// Screenshots go to outDir. Any failure throws (exit code 1); the last
// stdout line is a JSON summary.
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { audit } from "./a11y.mjs";

const cfg = JSON.parse(process.argv[2]);
const origin = new URL(cfg.url).origin;
const DEADLINE = 30_000;
mkdirSync(cfg.outDir, { recursive: true });

function publish(topic, payload) {
  execFileSync("mosquitto_pub", ["-h", "127.0.0.1", "-p", String(cfg.mqttPort), "-t", topic, "-q", "1", "-m", JSON.stringify(payload)]);
}

function telemetry(machine, extra = {}, site = "berlin") {
  publish(`plant/${site}/machine/${machine}/telemetry`, { temp: 70, rpm: 1480, state: "ok", hmi: { operator: "alice@example.com" }, ts: new Date().toISOString(), ...extra });
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function gqlAsAdmin(query) {
  const response = await fetch(cfg.url + "/graphql", {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: "Bearer " + cfg.adminToken },
    body: JSON.stringify({ query }),
  });
  return (await response.json()).data;
}

async function until(what, condition, ms = DEADLINE) {
  const end = Date.now() + ms;
  for (;;) {
    try { if (await condition()) return; } catch (err) { if (Date.now() > end) throw err; }
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const profile = mkdtempSync(join(tmpdir(), "meshlet-console-chromium-"));
const blocked = [];
const pageErrors = [];
const summary = { screenshots: [], a11y: {}, narrow: {} };
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // No name resolves but the node's address: nothing can leave the machine.
      "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ],
  });
  // Every request that is not to the node is refused and remembered.
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (new URL(url).origin === origin || url.startsWith("blob:") || url.startsWith("data:")) return route.continue();
    blocked.push(url);
    return route.abort("blockedbyclient");
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (msg) => { if (msg.type() === "error" && !/401|Unauthorized/.test(msg.text())) pageErrors.push("console: " + msg.text()); });
  page.on("websocket", (ws) => { if (!ws.url().startsWith(origin.replace("http", "ws"))) blocked.push(ws.url()); });

  const shot = async (name) => {
    const file = join(cfg.outDir, name + ".png");
    await page.screenshot({ path: file, fullPage: true });
    summary.screenshots.push(file);
  };
  const a11y = async (name) => {
    const problems = await page.evaluate(audit);
    summary.a11y[name] = problems;
    check(problems.length === 0, `accessibility problems on ${name}:\n  ${problems.join("\n  ")}`);
  };
  // Goes to a page of the console and waits until it has been shown.
  const visit = async (hash) => {
    await page.locator("main").evaluate((m) => { m.dataset.generation = "stale"; });
    await page.goto(cfg.url + "/" + hash);
    await until("the page " + hash, async () => page.locator("main").evaluate((m) => m.dataset.generation && m.dataset.generation !== "stale" && m.getAttribute("aria-busy") === "false"));
  };
  // Enters a token and waits until the page has been shown again with it.
  const useToken = async (token) => {
    if (!(await page.locator("#token-dialog").evaluate((d) => d.open))) await page.click("#token-button");
    const before = Number(await page.locator("main").evaluate((m) => m.dataset.generation)) || 0;
    await page.getByLabel("Token (from meshlet token create)").fill(token);
    await page.getByRole("button", { name: "Use token" }).click();
    await until("the page shown with the new token", async () => Number(await page.locator("main").evaluate((m) => m.dataset.generation)) > before);
  };

  // 1. Anonymous cannot read: the console asks for a token.
  await page.goto(cfg.url + "/");
  await page.locator("#token-dialog[open]").waitFor({ timeout: DEADLINE });
  await shot("01-token-prompt");
  await useToken(cfg.adminToken);

  // 2. The overview shows the example products.
  for (const name of cfg.products) {
    await page.locator(`#products tr[data-product="${name}"] a`, { hasText: name }).waitFor({ timeout: DEADLINE });
  }
  await page.locator("h1", { hasText: "Node " }).waitFor();
  await shot("02-overview");
  await a11y("overview");

  // 3. Publish over MQTT: the rate and the counts change without a reload.
  await page.evaluate(() => { window.__sameDocument = true; });
  const row = page.locator('#products tr[data-product="machine_health"]');
  const rateSeen = until("a live ingest rate above zero", async () => {
    telemetry("PR-0042", { temp: 71.5 });
    const rate = Number((await row.locator("td").nth(1).getAttribute("data-rate")) || 0);
    const entities = (await row.locator("td").nth(0).textContent()).trim();
    return rate > 0 && entities === "1";
  });
  await rateSeen;
  check(await page.evaluate(() => window.__sameDocument === true), "the overview was reloaded");
  summary.rateText = (await row.locator("td").nth(1).textContent()).trim();
  await shot("03-overview-live");

  // 4. Product page: the instance table updates by subscription.
  await row.locator("a", { hasText: "machine_health" }).click();
  await page.locator("#instances tr[data-key='PR-0042']").waitFor({ timeout: DEADLINE });
  await until("the subscription", async () => (await page.locator("#live-state").textContent()) === "live");
  await page.evaluate(() => { window.__sameDocument = true; });
  telemetry("PR-0043", { temp: 64.25 });
  await page.locator("#instances tr[data-key='PR-0043']").waitFor({ timeout: DEADLINE });
  telemetry("PR-0042", { temp: 88.75 });
  await until("the updated temperature", async () => (await page.locator("#instances tr[data-key='PR-0042']").textContent()).includes("88.75"));
  check(await page.evaluate(() => window.__sameDocument === true), "the product page was reloaded");
  // Sort by temperature, descending: PR-0042 (88.75) before PR-0043.
  const sortButton = page.locator("#instances thead button", { hasText: "temperature_c" });
  await sortButton.click();
  await sortButton.click();
  await until("descending order", async () => (await page.locator("#instances tbody tr").first().getAttribute("data-key")) === "PR-0042");
  // Filter: only PR-0043.
  await page.selectOption("#filter-field", "machine_id");
  await page.selectOption("#filter-op", "eq");
  await page.fill("#filter-value", "PR-0043");
  await page.getByRole("button", { name: "Apply" }).click();
  await until("the filter", async () => (await page.locator("#instances tbody tr").count()) === 1 && (await page.locator("#instance-total").textContent()) === "1");
  check(await page.getByRole("button", { name: "Load more" }).isHidden(), "Load more is offered on a single page");
  await shot("04-product");
  await a11y("product");
  const contractHref = await page.locator("a[download$='.odcs.json']").getAttribute("href");
  check(contractHref && contractHref.startsWith("blob:"), "no contract download link");

  // 5. Entity page: a chart per number field over the window.
  const now = Date.now();
  for (let k = 12; k >= 1; k--) telemetry("PR-0042", { temp: 60 + k, rpm: 1400 + k * 10, ts: new Date(now - k * 60_000).toISOString() });
  await visit("#/product/machine_health/PR-0042");
  const chart = page.locator("figure[data-field='temperature_c'] svg");
  await chart.waitFor({ timeout: DEADLINE });
  const dots = await chart.locator("circle.dot").count();
  check(dots >= 10, `the temperature chart has ${dots} points`);
  check((await chart.locator("path.line").getAttribute("d")).split("L").length >= 10, "the chart line has too few points");
  summary.chartPoints = dots;
  check((await page.locator("main").textContent()).includes("alice@example.com"), "admin sees the operator's email in clear");
  // The entity page follows the entity by subscription: a new reading
  // shows without a reload.
  await until("the entity subscription", async () => (await page.locator("#entity-live").textContent()) === "live");
  await page.evaluate(() => { window.__sameDocument = true; });
  const currentTemp = () => page.locator("tr", { has: page.locator("th", { hasText: "temperature_c" }) }).locator("td").first().textContent();
  check(!(await currentTemp()).includes("91.5"), "the new reading is shown before it was sent");
  telemetry("PR-0042", { temp: 91.5 });
  await until("the entity's new temperature", async () => (await currentTemp()).includes("91.5"));
  check(await page.evaluate(() => window.__sameDocument === true), "the entity page was reloaded");
  await shot("05-entity");
  await a11y("entity");

  // 6. A reader (role operator: operator_email masked by hash) sees masked values.
  await useToken(cfg.readerToken);
  await page.locator("h1", { hasText: "PR-0042" }).waitFor({ timeout: DEADLINE });
  await page.locator("figure[data-field='temperature_c'] svg").waitFor({ timeout: DEADLINE });
  const readerText = await page.locator("main").textContent();
  check(!readerText.includes("alice@example.com"), "the reader sees the clear email");
  const masked = (await page.locator("tr", { has: page.locator("th", { hasText: "operator_email" }) }).locator("td").first().textContent()).trim();
  check(masked.length > 8 && masked !== "–", `the masked email is "${masked}"`);
  summary.maskedEmail = masked;
  await shot("06-entity-reader-masked");
  // The reader may not see raw quarantined payloads.
  await visit("#/quarantine/machine_health");
  await page.locator("main", { hasText: "may not see the raw quarantined payloads" }).waitFor({ timeout: DEADLINE });
  await shot("07-quarantine-reader");

  // An analyst sees Berlin's machines only, and may not subscribe: the
  // table says so and polls instead.
  telemetry("PR-0100", { temp: 50 }, "lyon");
  await until("the Lyon machine", async () => (await gqlAsAdmin('{ machineHealth(machine_id: "PR-0100") { site } }')).machineHealth);
  await useToken(cfg.analystToken);
  await visit("#/product/machine_health");
  await page.locator("#instances tr[data-key='PR-0042']").waitFor({ timeout: DEADLINE });
  await until("the analyst's refusal to subscribe", async () => (await page.locator("#live-state").textContent()).includes("refreshed every 5 s"));
  check((await page.locator("#instances tr[data-key='PR-0100']").count()) === 0, "the analyst sees a Lyon machine");
  await shot("07-product-analyst");

  // 7. Quarantine: an out-of-range reading is kept with its reason, shown
  //    to the admin, and replayed once the definition allows it.
  await useToken(cfg.adminToken);
  telemetry("PR-0099", { temp: 200 });
  await visit("#/quarantine/machine_health");
  const entry = page.locator("main tbody tr").first();
  await until("the quarantined payload", async () => (await entry.textContent()).includes("temperature_c"));
  check((await entry.textContent()).includes('"temp":200'), "no payload preview");
  await a11y("quarantine");
  await shot("08-quarantine");
  const file = join(cfg.productsDir, "machine_health.yaml");
  const schemaGeneration = (await gqlAsAdmin("{ schemaStatus { generation } }")).schemaStatus.generation;
  writeFileSync(file, readFileSync(file, "utf8").replace("temperature_c:  { type: float, min: -40, max: 150", "temperature_c:  { type: float, min: -40, max: 250"));
  await until("the reload of the fixed definition", async () => (await gqlAsAdmin("{ schemaStatus { generation } }")).schemaStatus.generation > schemaGeneration);
  await page.getByRole("button", { name: "Replay through the current definition" }).click();
  await page.locator("main", { hasText: "Replayed 1 of 1" }).waitFor({ timeout: DEADLINE });
  check((await page.locator("#quarantine-total").textContent()) === "0", "the quarantine is not empty after replay");
  const replayed = await gqlAsAdmin('{ machineHealth(machine_id: "PR-0099") { temperature_c } }');
  check(replayed.machineHealth && replayed.machineHealth.temperature_c === 200, "the replayed reading is not stored");
  await shot("09-quarantine-replayed");

  // 8. Sync page: this node is also an aggregator and heard from one edge.
  await page.click("nav a:has-text('Sync')");
  await page.locator("h1", { hasText: "Sync" }).waitFor();
  await page.locator("table", { has: page.locator("caption", { hasText: "Edges heard from" }) }).locator("th", { hasText: cfg.edge }).waitFor({ timeout: DEADLINE });
  await a11y("sync");
  await shot("10-sync");

  // 9. Keyboard: Tab reaches the skip link, then the pages; Enter follows.
  await page.goto(cfg.url + "/#/");
  await page.reload();
  await page.locator("#products tr[data-product='machine_health']").waitFor({ timeout: DEADLINE });
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.classList.contains("skip")), "the first Tab does not reach the skip link");
  const focusOrder = [];
  for (let i = 0; i < 12; i++) {
    await page.keyboard.press("Tab");
    focusOrder.push(await page.evaluate(() => {
      const el = document.activeElement;
      const cs = getComputedStyle(el);
      return { text: el.textContent.trim().slice(0, 20), outline: cs.outlineStyle !== "none" && parseFloat(cs.outlineWidth) > 0 };
    }));
    if (focusOrder.at(-1).text === "Quarantine") break;
  }
  check(focusOrder.at(-1).text === "Quarantine", "Tab does not reach the Quarantine link: " + JSON.stringify(focusOrder));
  check(focusOrder.every((f) => f.outline), "focus is not visible: " + JSON.stringify(focusOrder));
  await page.keyboard.press("Enter");
  await page.locator("h1", { hasText: "Quarantine" }).waitFor({ timeout: DEADLINE });
  summary.keyboard = focusOrder.map((f) => f.text);

  // 10. Every page at 360 px wide: nothing wider than the screen.
  await page.setViewportSize({ width: 360, height: 740 });
  for (const [name, hash, ready] of [
    ["overview", "#/", "#products tr[data-product='machine_health']"],
    ["product", "#/product/machine_health", "#instances tr[data-key='PR-0042']"],
    ["entity", "#/product/machine_health/PR-0042", "figure[data-field='temperature_c'] svg"],
    ["quarantine", "#/quarantine/machine_health", "#quarantine-product"],
    ["sync", "#/sync", "h1:has-text('Sync')"],
  ]) {
    await visit(hash);
    await page.locator(ready).first().waitFor({ timeout: DEADLINE });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    summary.narrow[name] = width;
    check(width <= 360, `${name} is ${width}px wide at 360px`);
    await a11y(name + "-360");
    await shot("11-narrow-" + name);
  }

  check(blocked.length === 0, "requests outside the node: " + blocked.join(", "));
  check(pageErrors.length === 0, "page errors: " + pageErrors.join("\n"));
  summary.ok = true;
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(summary));
