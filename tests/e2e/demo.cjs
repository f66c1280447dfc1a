// Drives the /demo page in headless Chromium as two users: bob sees alice's message as an
// unread count, then in the room; typing shows; a direct chat opens on both sides.
// Usage: node demo.cjs BASE_URL SCREENSHOT_PATH   (playwright-core on NODE_PATH)
"use strict";
const { chromium } = require("playwright-core");

const [base, screenshot] = process.argv.slice(2);
const TIMEOUT = 10_000;

async function signIn(browser, user) {
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (error) => console.error(`${user}'s page: ${error}`));
  await page.goto(`${base}/demo`);
  await page.fill("#mint-user", user);
  await page.click("#mint button");
  await page.waitForSelector('#rooms li[data-room="route-1"]');
  await page.waitForSelector("#login", { state: "hidden" });
  return page;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const alice = await signIn(browser, "alice");
    const bob = await signIn(browser, "bob");
    await alice.click('#rooms li[data-room="route-1"]');
    await alice.waitForSelector("#compose:not([hidden])");

    await alice.fill("#text", "first, while bob looks elsewhere");
    await alice.click("#compose button");
    await bob.waitForSelector('#rooms li[data-room="route-1"] .unread:text("1")');

    await bob.click('#rooms li[data-room="route-1"]');
    await bob.waitForSelector('#messages li:has-text("first, while bob looks elsewhere")');

    await alice.fill("#text", "hello bob");
    await bob.waitForSelector('#typing:has-text("alice is typing")');
    await alice.click("#compose button");
    await bob.waitForSelector('#messages li:has-text("hello bob")');

    await bob.fill("#text", "hi alice");
    await bob.click("#compose button");
    await alice.waitForSelector('#messages li.mine:has-text("hello bob")');
    await alice.waitForSelector('#messages li:has-text("hi alice")');

    await bob.fill("#direct-user", "alice");
    await bob.click("#direct button");
    await bob.waitForSelector('#room-title:has-text("@ alice")');
    await alice.waitForSelector('#rooms li:has-text("@ bob")');

    await bob.click('#rooms li[data-room="route-1"]');
    await bob.waitForSelector('#messages li:has-text("hi alice")');
    await bob.screenshot({ path: screenshot, fullPage: true });
    console.log(`ok; screenshot in ${screenshot}`);
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
