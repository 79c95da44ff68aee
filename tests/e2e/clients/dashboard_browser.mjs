// The dashboard in headless Chromium (playwright-core), driven by the test over stdin/stdout,
// one JSON object a line each way:
//   argv: the page's URL (with ?api_key=), the chromium binary, the folder for screenshots.
//   out {"ready": ...}           once the page shows the endpoints from its stream
//   in  {"await": REQUEST_ID}    the test made that request: wait for its row, take the screenshots
//   out {"row", "tokens", "overflow", "shots", "problems"}   (problems: console errors and warnings,
//                                page errors, a CSP violation among them, until then)
//   in  {"await_offline": true}  the gateway was stopped: wait until the page says it lost the stream
//   out {"offline", "requests"}  every request any page made; then the browser is closed
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import path from "node:path";

const [pageUrl, executablePath, shotDir] = process.argv.slice(2);
const WAIT = 60_000;
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
const say = (data) => console.log(JSON.stringify(data));
const hear = async () => JSON.parse((await lines.next()).value);

const requests = [];
const problems = [];
function watch(page, name) {
  page.on("request", (request) => requests.push({ page: name, url: request.url(), type: request.resourceType() }));
  page.on("console", (message) => {
    if (message.type() === "error" || message.type() === "warning") problems.push(`${name}: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`${name}: ${error.message}`));
}

const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox"] });
try {
  const desktop = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await desktop.newPage();
  watch(page, "desktop");
  await page.goto(pageUrl, { waitUntil: "domcontentloaded" });
  await page.locator("#endpoints-body tr[data-endpoint]").first().waitFor({ timeout: WAIT });
  await page.locator("#conn.live").waitFor({ timeout: WAIT });
  say({ ready: true, endpoints: await page.locator("#endpoints-body tr[data-endpoint]").allInnerTexts() });

  const { await: requestId } = await hear();
  const row = page.locator(`#requests-body tr[data-request-id="${requestId}"]`);
  await row.waitFor({ timeout: WAIT });
  const configShown = () => document.getElementById("auth").textContent !== "";   // /api/config answered
  await page.waitForFunction(configShown, null, { timeout: WAIT });
  const rowText = await row.innerText();
  const tokensTile = await page.locator("#tokens-body").innerText();
  const desktopShot = path.join(shotDir, "dashboard-desktop.png");
  await page.screenshot({ path: desktopShot, fullPage: true });

  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2,
                                           isMobile: true, hasTouch: true });
  const small = await phone.newPage();
  watch(small, "phone");
  await small.goto(pageUrl, { waitUntil: "domcontentloaded" });
  await small.locator(`#requests-body tr[data-request-id="${requestId}"]`).waitFor({ timeout: WAIT });
  await small.waitForFunction(configShown, null, { timeout: WAIT });
  const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const phoneShot = path.join(shotDir, "dashboard-phone.png");
  await small.screenshot({ path: phoneShot, fullPage: true });
  await phone.close();
  say({ row: rowText, tokens: tokensTile, overflow, shots: [desktopShot, phoneShot], problems: [...problems] });

  await hear();
  await page.locator("#conn.down, #conn.wait").waitFor({ timeout: WAIT });
  say({ offline: await page.locator("#conn").innerText(), requests });
} finally {
  await browser.close();
  input.close();
}
