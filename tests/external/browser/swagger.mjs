// Opens Swagger UI at /docs in a real Chromium, enters TOKEN with the Authorize button,
// runs "Try it out" on GET /v1/keys/{key} with the example key, and checks the answer
// the page shows. Exits non-zero on failure.
// Usage: node swagger.mjs BASE_URL KEY TOKEN
import { chromium } from "playwright-core";

const [base, key, token] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const fail = async (message) => {
  await page.screenshot({ path: "swagger-failure.png", fullPage: true }).catch(() => {});
  console.error(`swagger-ui: ${message} (screenshot: tests/external/browser/swagger-failure.png)`);
  await browser.close();
  process.exit(1);
};
const page = await browser.newPage();
const external = [];
page.on("request", (req) => {
  if (!req.url().startsWith(base) && !req.url().startsWith("data:")) external.push(req.url());
});
try {
  await page.goto(`${base}/docs`, { waitUntil: "load", timeout: 30000 });
  const op = page.locator("#operations-Keys-getKey");
  await op.waitFor({ timeout: 30000 });
  for (const id of ["getKey", "headKey", "getValue", "batchGet"]) {
    if ((await page.locator(`#operations-Keys-${id}`).count()) !== 1) await fail(`operation ${id} not listed`);
  }
  if ((await page.locator("#operations-Legacy-legacyGetValue.opblock-deprecated").count()) !== 1) {
    await fail("the legacy route is not shown as deprecated");
  }
  // Authorize: the dialog of the bearer scheme takes the token for every operation.
  await page.locator(".auth-wrapper .authorize").click();
  const dialog = page.locator(".dialog-ux");
  await dialog.locator("input").first().fill(token);
  await dialog.locator("button", { hasText: "Authorize" }).click();
  await dialog.locator("button", { hasText: "Close" }).click();
  await op.locator(".opblock-summary").click();
  await op.getByRole("button", { name: "Try it out" }).click();
  const input = op.locator('input[placeholder="key"]');
  if ((await input.inputValue()) === "") await input.fill(key);
  await op.getByRole("button", { name: "Execute" }).click();
  const body = op.locator(".live-responses-table .response-col_description pre").first();
  await body.waitFor({ timeout: 15000 });
  const text = await body.innerText();
  const status = (await op.locator(".live-responses-table tr.response .response-col_status").first().innerText()).trim();
  if (status !== "200" || !text.includes(key)) await fail(`expected 200 with ${key}, got ${status}: ${text}`);
  if (external.length) await fail(`the page fetched from outside the server: ${external.join(", ")}`);
  await page.screenshot({ path: "swagger.png", fullPage: false });
  console.log(`swagger-ui: "Try it out" on GET /v1/keys/{key} answered 200 with ${key}`);
} catch (err) {
  await fail(err.message);
}
await browser.close();
