// Loads flowmatch serve's page in headless Chromium, presses Generate, waits for the grid and
// the animation, checks that neither canvas is blank and takes a screenshot (after scrubbing
// to FRAME, when given).
//   node page-test.mjs URL SCREENSHOT.png [FRAME]
import { chromium } from "playwright-core";

const [url, screenshot, frame] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1180, height: 660 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("model").options.length > 0);
  await page.click("#generate");
  await page.waitForFunction(() => document.getElementById("grid").dataset.ready === "1",
    null, { timeout: 120000 });
  await page.waitForFunction(() => Number(document.getElementById("flow").dataset.frame) >= 3,
    null, { timeout: 30000 });
  const canvases = await page.evaluate(() => ["grid", "flow"].map((id) => {
    const c = document.getElementById(id);
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let min = 255, max = 0;
    for (let i = 0; i < d.length; i += 4) { min = Math.min(min, d[i]); max = Math.max(max, d[i]); }
    return { id, width: c.width, height: c.height, min, max };
  }));
  if (frame !== undefined) {
    await page.click("#play");
    await page.$eval("#scrub", (el, f) => {
      el.value = f;
      el.dispatchEvent(new Event("input"));
    }, frame);
  }
  const time = await page.textContent("#time");
  const stats = await page.textContent("#stats");
  await page.screenshot({ path: screenshot });
  const blank = canvases.filter((c) => c.max - c.min < 40).map((c) => c.id);
  const ok = blank.length === 0 && /^t = [01]\.\d\d$/.test(time) && /NFE \d+/.test(stats)
    && errors.length === 0;
  console.log(JSON.stringify({ ok, canvases, time, stats, errors, blank }));
  process.exitCode = ok ? 0 : 1;
} finally {
  await browser.close();
}
