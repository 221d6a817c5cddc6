// The web console (issue 28: "current Chromium and Firefox") in headless
// Firefox (Debian `firefox-esr`), driven by puppeteer-core over WebDriver
// BiDi: Playwright cannot drive a stock Firefox, puppeteer-core can and
// downloads no browser. tests/it/console.rs starts the node and runs
// `node console_firefox.mjs '<json>'` with { url, mqttPort, adminToken,
// products, outDir }. A short walk (the Chromium test covers the rest):
// the overview's products and node facts, a product table updated by
// subscription after an MQTT publish, an entity chart; no page errors and
// no request outside the node. Any failure throws (exit code 1); the last
// stdout line is a JSON summary.
import puppeteer from "puppeteer-core";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const cfg = JSON.parse(process.argv[2]);
const origin = new URL(cfg.url).origin;
const DEADLINE = 20_000;
mkdirSync(cfg.outDir, { recursive: true });

function telemetry(machine, extra = {}) {
  const payload = { temp: 70, rpm: 1480, state: "ok", ts: new Date().toISOString(), ...extra };
  execFileSync("mosquitto_pub", ["-h", "127.0.0.1", "-p", String(cfg.mqttPort), "-t", `plant/berlin/machine/${machine}/telemetry`, "-q", "1", "-m", JSON.stringify(payload)]);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const profile = mkdtempSync(join(tmpdir(), "meshlet-console-firefox-"));
const blocked = [];
const pageErrors = [];
const summary = { screenshots: [] };
let browser;
try {
  browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
    headless: true,
    userDataDir: profile,
    defaultViewport: { width: 1280, height: 900 },
    extraPrefsFirefox: {
      // Anything the browser itself tries to reach goes to a proxy that
      // does not exist; only the node (on 127.0.0.1) is reached directly.
      "network.proxy.type": 1,
      "network.proxy.http": "127.0.0.1",
      "network.proxy.http_port": 9,
      "network.proxy.ssl": "127.0.0.1",
      "network.proxy.ssl_port": 9,
      "network.proxy.allow_hijacking_localhost": false,
    },
  });
  summary.browser = await browser.version();
  const page = await browser.newPage();
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (msg) => { if (msg.type() === "error" && !/401|Unauthorized/.test(msg.text())) pageErrors.push("console: " + msg.text()); });
  // Every request that is not to the node is refused and remembered.
  await page.setRequestInterception(true);
  page.on("request", (request) => {
    const url = request.url();
    if (new URL(url).origin === origin || url.startsWith("blob:") || url.startsWith("data:")) return request.continue();
    blocked.push(url);
    return request.abort("blockedbyclient");
  });
  const text = (selector) => page.$eval(selector, (el) => el.textContent);
  const shot = async (name) => {
    const file = join(cfg.outDir, "firefox-" + name + ".png");
    await page.screenshot({ path: file, fullPage: true });
    summary.screenshots.push(file);
  };

  // 1. The console asks for a token (anonymous cannot read); give it.
  await page.goto(cfg.url + "/");
  await page.waitForSelector("#token-dialog[open]", { timeout: DEADLINE });
  await page.type("#token-input", cfg.adminToken);
  await page.click("#token-form button[value='save']");

  // 2. The overview: every example product, and the node's facts.
  for (const name of cfg.products) {
    await page.waitForSelector(`#products tr[data-product="${name}"] a`, { timeout: DEADLINE });
  }
  await page.waitForFunction(() => {
    const facts = [...document.querySelectorAll("dl.facts dt")].map((dt) => [dt.textContent, dt.nextElementSibling.textContent]);
    const get = (k) => (facts.find(([dt]) => dt === k) || [])[1];
    return /^Node \S/.test(document.querySelector("h1").textContent) && get("State") === "ready" && /\d/.test(get("Version") || "") && /\d/.test(get("Store on disk") || "");
  }, { timeout: DEADLINE });
  summary.facts = await page.$$eval("dl.facts dt", (dts) => dts.map((dt) => dt.textContent + ": " + dt.nextElementSibling.textContent));
  await shot("01-overview");

  // 3. Product page: a published reading appears without a reload.
  await page.click('#products tr[data-product="machine_health"] a');
  await page.waitForSelector("#instances", { timeout: DEADLINE });
  await page.waitForFunction(() => document.querySelector("#live-state").textContent === "live", { timeout: DEADLINE });
  await page.evaluate(() => { window.__sameDocument = true; });
  telemetry("FF-0001", { temp: 66.5 });
  await page.waitForSelector("#instances tr[data-key='FF-0001']", { timeout: DEADLINE });
  check((await text("#instances tr[data-key='FF-0001']")).includes("66.5"), "the new row lacks its temperature");
  check(await page.evaluate(() => window.__sameDocument === true), "the product page was reloaded");
  await shot("02-product");

  // 4. Entity page: the temperature chart is drawn (an SVG path).
  const now = Date.now();
  for (let k = 6; k >= 1; k--) telemetry("FF-0001", { temp: 60 + k, ts: new Date(now - k * 60_000).toISOString() });
  await page.evaluate(() => { location.hash = "#/product/machine_health/FF-0001"; });
  await page.waitForFunction(() => {
    const d = document.querySelector("figure[data-field='temperature_c'] svg path.line")?.getAttribute("d") || "";
    return d.split("L").length >= 6;
  }, { timeout: DEADLINE });
  summary.chartPoints = await page.$$eval("figure[data-field='temperature_c'] svg circle.dot", (c) => c.length);
  check(await page.evaluate(() => window.__sameDocument === true), "the console was reloaded");
  await shot("03-entity");

  check(blocked.length === 0, "requests outside the node: " + blocked.join(", "));
  check(pageErrors.length === 0, "page errors: " + pageErrors.join("\n"));
  summary.ok = true;
} catch (err) {
  // What the page said is usually why it never got where it was awaited.
  err.message += "\npage errors: " + (pageErrors.join("\n") || "none") + "\nrequests outside the node: " + (blocked.join(", ") || "none");
  throw err;
} finally {
  if (browser) await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(summary));
