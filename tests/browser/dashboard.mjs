// Drives Debian's Chromium (headless) through /dashboard:
//   node dashboard.mjs <base-url> <admin-key> <expected.json> <screenshot.png>
// Exits non-zero with a message on the first failed check.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [base, key, expectedPath, screenshot] = process.argv.slice(2);
const expected = JSON.parse(readFileSync(expectedPath, "utf8"));
const fail = (msg) => {
  throw new Error(msg);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let phase = "load";
const consoleErrors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    // The wrong-key step makes the browser itself log the 401 it received.
    if (phase === "wrong-key" && m.text().includes("401")) return;
    consoleErrors.push(`${phase}: ${m.text()}`);
  });
  page.on("pageerror", (e) => consoleErrors.push(`${phase}: uncaught ${e.message}`));

  const response = await page.goto(`${base}/dashboard`);
  if (response.status() !== 200) fail(`/dashboard answered ${response.status()}`);
  await page.waitForSelector("#admin-key", { state: "visible" });

  phase = "wrong-key";
  await page.fill("#admin-key", "not-the-key");
  await page.click("#key-submit");
  await page.waitForFunction(() => /invalid key/i.test(document.querySelector("#key-error")?.textContent || ""));
  if (await page.isVisible("#dashboard")) fail("the dashboard showed with a wrong key");

  phase = "key";
  await page.fill("#admin-key", key);
  await page.click("#key-submit");
  await page.waitForSelector("#dashboard", { state: "visible" });
  await page.waitForSelector("#health-table tbody tr[data-webhook-id]");
  const storage = await page.evaluate(() => [localStorage.length, sessionStorage.length, document.cookie]);
  if (storage[0] || storage[1] || storage[2]) fail(`the key leaked into storage: ${storage}`);

  phase = "health";
  const rows = await page.$$eval("#health-table tbody tr[data-webhook-id]", (trs) =>
    trs.map((tr) => {
      const cell = (c) => tr.querySelector(`.col-${c}`)?.textContent.trim();
      return {
        id: tr.dataset.webhookId,
        deliveries: cell("deliveries"),
        success: cell("success"),
        pending: cell("pending"),
        failed: cell("failed"),
        success_rate: cell("success-rate"),
        consecutive_failures: cell("consecutive-failures"),
      };
    }),
  );
  const order = rows.map((r) => r.id);
  if (JSON.stringify(order) !== JSON.stringify(expected.order)) {
    fail(`health table order ${JSON.stringify(order)}, expected ${JSON.stringify(expected.order)}`);
  }
  for (const want of expected.webhooks) {
    const got = rows.find((r) => r.id === want.id);
    for (const [field, value] of Object.entries(want)) {
      if (String(got[field]) !== String(value)) fail(`${want.id} ${field}: shown ${got[field]}, expected ${value}`);
    }
  }

  phase = "chart";
  const bars = await page.$$eval("#volume-chart rect.bar-success, #volume-chart rect.bar-failed", (r) => r.length);
  if (bars < 1) fail("the volume chart drew no bars");
  const failures = await page.$$eval("#failures-table tbody tr", (r) => r.length);
  if (failures < 1) fail("no recent failures listed");

  phase = "isolation";
  const circuits = await page.$eval("#circuits-table tbody", (t) => t.textContent);
  if (!circuits.includes(expected.open_circuit)) fail(`open circuits show ${circuits}`);
  const disabled = await page.$eval("#disabled-table tbody", (t) => t.textContent);
  if (!disabled.includes(expected.disabled) || !disabled.includes("410 Gone")) fail(`disabled webhooks show ${disabled}`);

  phase = "screenshot";
  await page.screenshot({ path: screenshot, fullPage: true });

  phase = "detail";
  await page.click(`#health-table tbody tr[data-webhook-id="${expected.order[0]}"]`);
  await page.waitForSelector("#webhook-detail tr[data-delivery-id]");
  await page.click("#webhook-detail tr[data-delivery-id]");
  await page.waitForSelector("#attempt-table tbody tr");

  // The actions, on the failing webhook (its receiver answers 200 by now).
  phase = "settings";
  const text = (sel) => page.$eval(sel, (n) => n.textContent);
  await page.waitForSelector("#detail-actions:not([hidden])");
  const circuit = await text("#detail-info .info-circuit");
  if (!/open/.test(circuit)) fail(`circuit shows ${circuit}`);
  const headers = await text("#detail-info .info-headers");
  if (!headers.includes("X-Api-Key") || headers.includes(expected.header_value)) fail(`headers show ${headers}`);
  const filter = await text("#detail-info .info-filter");
  if (!filter.includes("pool_id")) fail(`filter shows ${filter}`);
  const limit = await text("#detail-info .info-rate-limit");
  if (!limit.includes("50/s")) fail(`rate limit shows ${limit}`);
  const waitResult = (re) =>
    page.waitForFunction((src) => new RegExp(src).test(document.querySelector("#action-result")?.textContent || ""), re.source);

  phase = "retry";
  await page.click("#action-retry");
  await waitResult(/Retried dlv_\w+: success/);

  phase = "test-event";
  await page.click("#action-test");
  await waitResult(/Test delivery dlv_\w+: success \(HTTP 200\)/);

  phase = "recover";
  await page.click("#action-recover");
  await waitResult(new RegExp(`Requeued ${expected.recoverable} failed deliveries`));

  phase = "re-enable";
  await page.click(`#health-table tbody tr[data-webhook-id="${expected.order[2]}"]`);
  await page.waitForSelector("#action-enable:not([hidden])");
  await page.click("#action-enable");
  await waitResult(/re-enabled/);
  await page.waitForFunction(() => /State\s*active/.test(document.querySelector("#detail-info .info-state")?.textContent || ""));
  if (!(await page.$eval("#action-enable", (b) => b.hidden))) fail("re-enable is still offered");
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-actions.png"), fullPage: true });

  if (consoleErrors.length) fail(`console errors:\n${consoleErrors.join("\n")}`);
  console.log(`dashboard OK: ${rows.length} webhooks, ${bars} bars, ${failures} failures, 4 actions; screenshot ${screenshot}`);
} catch (e) {
  console.error(`dashboard check failed (${phase}): ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
