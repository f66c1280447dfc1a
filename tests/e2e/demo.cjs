// Drives the /demo page in headless Chromium as two users: bob sees alice's message as an
// unread count, then in the room; typing shows; a direct chat opens on both sides. Then
// alice edits a message and bob sees the new text marked "(edited)"; reactions show as chips
// on both sides and toggle; alice deletes a message while bob is in another room, and bob
// finds it deleted (with the deletion not counted as unread); bob has no Edit/Delete on
// alice's messages; and a fresh page (history from `resume`) shows the same, with no change
// message as a bubble of its own.
// Usage: node demo.cjs BASE_URL SCREENSHOT_PATH   (playwright-core on NODE_PATH)
"use strict";
const { chromium } = require("playwright-core");

const [base, screenshot] = process.argv.slice(2);
const TIMEOUT = 10_000;

// The `data-seq` of the message in `page`'s open room whose text contains `text`.
async function seqOf(page, text) {
  return page.getAttribute(`#messages li:has(.text:has-text(${JSON.stringify(text)}))`, "data-seq");
}

async function expectCount(page, selector, count, what) {
  const found = await page.locator(selector).count();
  if (found !== count) throw new Error(`${what}: ${found} matches for ${selector}, expected ${count}`);
}

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

    // Edit/Delete are on one's own messages only; reactions on every message.
    const first = await seqOf(alice, "first, while bob looks elsewhere");
    const hello = await seqOf(alice, "hello bob");
    const helloItem = `#messages li[data-seq="${hello}"]`;
    const firstItem = `#messages li[data-seq="${first}"]`;
    await bob.waitForSelector('#messages li[data-sender="bob"] button[data-action="edit"]');
    await bob.waitForSelector('#messages li[data-sender="alice"] .picker button[data-action="react"]');
    await expectCount(bob, '#messages li[data-sender="alice"] button[data-action="edit"]', 0, "bob's Edit on alice's");
    await expectCount(bob, '#messages li[data-sender="alice"] button[data-action="delete"]', 0, "bob's Delete on alice's");
    await alice.waitForSelector(`${helloItem} button[data-action="edit"]`);

    // Escape cancels an edit; Enter saves it, and bob sees it live.
    await alice.click(`${helloItem} button[data-action="edit"]`);
    await alice.fill(`${helloItem} .edit-input`, "not this");
    await alice.press(`${helloItem} .edit-input`, "Escape");
    await alice.waitForSelector(`${helloItem} .edit-input`, { state: "detached" });
    await alice.waitForSelector(`${helloItem} .text:text-is("hello bob")`);
    await alice.click(`${helloItem} button[data-action="edit"]`);
    await alice.fill(`${helloItem} .edit-input`, "hello bob, how are you?");
    await alice.press(`${helloItem} .edit-input`, "Enter");
    await bob.waitForSelector(`${helloItem} .text:text-is("hello bob, how are you?")`);
    await bob.waitForSelector(`${helloItem} .edited-mark:text-is("(edited)")`);
    await alice.waitForSelector(`${helloItem} .edited-mark:text-is("(edited)")`);
    await expectCount(bob, "#messages li", 3, "bob's bubbles after the edit");

    // Bob reacts; alice sees the chip; alice's click on it adds hers, a second click takes it back.
    await bob.click(`${helloItem} .picker button[data-reaction="👍"]`);
    await alice.waitForSelector(`${helloItem} .chip[data-reaction="👍"][data-count="1"]:not(.reacted)`);
    await bob.waitForSelector(`${helloItem} .chip.reacted[data-reaction="👍"][data-count="1"]`);
    await alice.click(`${helloItem} .chip[data-reaction="👍"]`);
    await bob.waitForSelector(`${helloItem} .chip[data-reaction="👍"][data-count="2"]`);
    await alice.waitForSelector(`${helloItem} .chip.reacted[data-reaction="👍"][data-count="2"]`);
    await alice.click(`${helloItem} .chip[data-reaction="👍"]`);
    await bob.waitForSelector(`${helloItem} .chip[data-reaction="👍"][data-count="1"]`);
    await alice.waitForSelector(`${helloItem} .chip[data-reaction="👍"][data-count="1"]:not(.reacted)`);
    await expectCount(bob, "#messages li", 3, "bob's bubbles after the reactions");

    // Alice deletes a message while bob is in the direct room, then sends one: bob's unread
    // count for route-1 is 1 (the deletion is not unread), and in the room the message shows
    // as deleted.
    await bob.click('#rooms li:has-text("@ alice")');
    await bob.waitForSelector('#room-title:has-text("@ alice")');
    await alice.click(`${firstItem} button[data-action="delete"]`);
    await alice.waitForSelector(`${firstItem}.deleted .text:text-is("message deleted")`);
    await alice.fill("#text", "one more");
    await alice.click("#compose button");
    await alice.waitForSelector('#messages li.mine:has-text("one more")');
    const last = await seqOf(alice, "one more");
    await bob.waitForSelector(`#rooms li[data-room="route-1"][data-last-seq="${last}"]`);
    await bob.waitForSelector('#rooms li[data-room="route-1"] .unread:text-is("1")');
    await bob.click('#rooms li[data-room="route-1"]');
    await bob.waitForSelector(`${firstItem}.deleted .text:text-is("message deleted")`);
    await expectCount(bob, `${firstItem} .picker`, 0, "reactions on a deleted message");
    await expectCount(bob, "#messages li", 4, "bob's bubbles after the deletion");

    // A fresh page gets the room from `resume`: targets in their current state, changes not shown.
    const again = await signIn(browser, "alice");
    await again.click('#rooms li[data-room="route-1"]');
    await again.waitForSelector('#messages li:has-text("one more")');
    await again.waitForSelector(`${firstItem}.deleted .text:text-is("message deleted")`);
    await again.waitForSelector(`${helloItem} .text:text-is("hello bob, how are you?")`);
    await again.waitForSelector(`${helloItem} .edited-mark`);
    await again.waitForSelector(`${helloItem} .chip[data-reaction="👍"][data-count="1"]:not(.reacted)`);
    await expectCount(again, "#messages li", 4, "bubbles after a resume");
    await again.close();

    // Bob's page said it received every message it shows, so he is spared their pushes.
    const acknowledged = await bob.evaluate(() =>
      Math.max(0, ...window.demoDebug.sent.filter((f) => f.type === "received" && f.room_id === "route-1").map((f) => f.seq)),
    );
    const shown = await bob.evaluate(() => Math.max(...window.demoDebug.received.filter((f) => f.type === "message").map((f) => f.message.seq)));
    if (acknowledged !== shown) throw new Error(`bob acknowledged up to seq ${acknowledged}, shown ${shown}`);

    await bob.screenshot({ path: screenshot, fullPage: true });
    console.log(`ok; screenshot in ${screenshot}`);
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
