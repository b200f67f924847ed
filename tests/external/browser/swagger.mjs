// Opens Swagger UI at /docs in a real Chromium, runs "Try it out" on GET /v1/keys/{key}
// with the example key and no token (401), enters TOKEN with the Authorize button, runs
// it again (200 with the value), and checks each answer the page shows. Screenshots of
// both answers go to $ARTIFACTS (default: this folder). Exits non-zero on failure.
// Usage: node swagger.mjs BASE_URL KEY TOKEN
import { chromium } from "playwright-core";
import path from "node:path";

const [base, key, token] = process.argv.slice(2);
const artifacts = process.env.ARTIFACTS || ".";
const shot = (name) => path.join(artifacts, name);
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
  await page.screenshot({ path: shot("swagger-failure.png"), fullPage: true }).catch(() => {});
  console.error(`swagger-ui: ${message} (screenshot: ${shot("swagger-failure.png")})`);
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
  // Runs "Execute" and returns the answer the page then shows. A previous answer stays
  // on the page until the new one replaces it, so wait for the status we expect (and
  // read whatever is there if it never comes).
  const execute = async (expected) => {
    const status = op.locator(".live-responses-table tr.response .response-col_status").first();
    await op.getByRole("button", { name: "Execute" }).click();
    await op
      .locator(".live-responses-table tr.response .response-col_status", { hasText: expected })
      .waitFor({ timeout: 15000 })
      .catch(() => {});
    const body = op.locator(".live-responses-table .response-col_description pre").first();
    return { status: (await status.innerText()).trim(), text: await body.innerText() };
  };
  // A screenshot with the answer in view.
  const snap = async (name) => {
    await op.locator(".live-responses-table").first().scrollIntoViewIfNeeded();
    await page.screenshot({ path: shot(name), fullPage: false });
  };
  await op.locator(".opblock-summary").click();
  await op.getByRole("button", { name: "Try it out" }).click();
  const input = op.locator('input[placeholder="key"]');
  if ((await input.inputValue()) === "") await input.fill(key);
  // Without a token: refused.
  const refused = await execute("401");
  if (refused.status !== "401" || !refused.text.includes("urn:kvserve:problem:unauthorized")) {
    await fail(`expected 401 without a token, got ${refused.status}: ${refused.text}`);
  }
  await snap("swagger-ui-401.png");
  // Authorize: the dialog of the bearer scheme takes the token for every operation.
  await page.locator(".auth-wrapper .authorize").click();
  const dialog = page.locator(".dialog-ux");
  await dialog.locator("input").first().fill(token);
  await dialog.locator("button", { hasText: "Authorize" }).click();
  await dialog.locator("button", { hasText: "Close" }).click();
  const ok = await execute("200");
  if (ok.status !== "200" || !ok.text.includes(key)) {
    await fail(`expected 200 with ${key} after Authorize, got ${ok.status}: ${ok.text}`);
  }
  if (external.length) await fail(`the page fetched from outside the server: ${external.join(", ")}`);
  await snap("swagger-ui-200.png");
  console.log(`swagger-ui: "Try it out" on GET /v1/keys/{key}: 401 without a token, 200 with ${key} after Authorize; screenshots in ${artifacts}`);
} catch (err) {
  await fail(err.message);
}
await browser.close();
