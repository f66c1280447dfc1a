// Drives the /demo page in headless Chromium through a token's end. Carol signs in with a
// token that expires in 3 s (minted with `ttl_s`, pasted); the server's `token_expiring`
// makes the page mint a fresh token and send it with `auth`; past the old token's `exp` plus
// the leeway (1 s in this test's server) the same connection is still open and delivers a
// message RouteAPI posts: no 4001, no reconnect.
// Usage: node demo-refresh.cjs BASE_URL API_KEY   (playwright-core on NODE_PATH)
"use strict";
const { chromium } = require("playwright-core");

const [base, apiKey] = process.argv.slice(2);
const TIMEOUT = 10_000;

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function json(method, path, body, auth) {
  const headers = { "Content-Type": "application/json" };
  if (auth) headers.Authorization = `Bearer ${auth}`;
  const reply = await fetch(`${base}${path}`, { method, headers, body: JSON.stringify(body) });
  const text = await reply.text();
  if (!reply.ok) throw new Error(`${method} ${path}: ${reply.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(TIMEOUT);
    page.on("pageerror", (error) => console.error(`carol's page: ${error}`));
    const { token } = await json("POST", "/demo/token", { user_id: "carol", ttl_s: 3 });
    const exp = JSON.parse(Buffer.from(token.split(".")[1], "base64url")).exp;
    await page.goto(`${base}/demo`);
    await page.fill("#paste-token", token);
    await page.click("#paste button");
    await page.waitForSelector('#status[data-state="connected"]');

    // The warning comes at once (the token ends within 60 s); the page answers it.
    await page.waitForFunction((exp) => window.demoDebug.refreshed.includes(exp), exp);
    const debug = await page.evaluate(() => window.demoDebug);
    const auth = debug.sent.find((f) => f.type === "auth");
    check(auth && auth.token !== token, `auth frame with a fresh token: ${JSON.stringify(auth)}`);
    const reply = debug.received.find((f) => f.id === auth.id);
    check(reply && reply.type === "ok", `auth answered ok: ${JSON.stringify(reply)}`);

    // Past exp + leeway the connection stays, and is served.
    await page.waitForFunction((exp) => Date.now() / 1000 > exp + 2, exp, { timeout: 15_000 });
    await json("POST", "/v1/rooms/route-9/messages", { text: "still here?" }, apiKey);
    await page.waitForFunction(() =>
      window.demoDebug.received.some((f) => f.type === "message" && f.message.text === "still here?"),
    );
    const after = await page.evaluate(() => window.demoDebug);
    check(after.reconnects.length === 0, `no reconnect: ${JSON.stringify(after.reconnects)}`);
    check(
      (await page.getAttribute("#status", "data-state")) === "connected",
      "still connected after the old token's end",
    );
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
