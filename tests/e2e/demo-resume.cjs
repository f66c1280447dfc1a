// Drives the /demo page in headless Chromium through dropped connections. Alice reads
// route-1 live; her connection drops (window.demoDropConnection()) and stays down while
// RouteAPI posts to route-1 and route-2, edits a message, removes her from route-old and
// makes route-new. The page reconnects by itself and catches up with one `resume` and then
// `sync` pages (the page limit lowered to 3); three messages pushed in the middle of the
// catch-up wait for the ones before them. The page must then show exactly the server's
// messages, in seq order, none twice, none missing; the first frame after the drop must be
// `resume`, listing route-1 at the seq the page had, and no `rooms` frame is sent. A second
// drop has messages arrive both pushed and in the `resumed` reply: shown once. Then a
// reload resumes from the cache in localStorage, and a cache from another epoch is reset.
// (window.demoDebug's holds stop the page at each of those points.)
// Usage: node demo-resume.cjs BASE_URL API_KEY   (playwright-core on NODE_PATH)
"use strict";
const { chromium } = require("playwright-core");

const [base, apiKey] = process.argv.slice(2);
const TIMEOUT = 10_000;
const STORAGE_KEY = "chat-engine-demo:alice";

function check(ok, what) {
  if (!ok) throw new Error(what);
}

function sameList(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, `${what}: ${a}, expected ${e}`);
}

// A REST call as RouteAPI.
async function api(method, path, body) {
  const reply = await fetch(`${base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await reply.text();
  if (!reply.ok) throw new Error(`${method} ${path}: ${reply.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const post = (room, text) => api("POST", `/v1/rooms/${room}/messages`, { text });

// The server's history of a room as the page should show it: its messages (not changes).
async function serverMessages(room) {
  const page = await api("GET", `/v1/rooms/${room}/messages?since_seq=0&limit=500`);
  const changes = new Set(["edit", "delete", "reaction"]);
  return page.messages.filter((m) => !changes.has(m.kind)).map((m) => ({ seq: m.seq, text: m.text }));
}

// What the page shows of its open room, top to bottom.
async function shown(page) {
  return page.$$eval("#messages li", (items) =>
    items.map((li) => ({ seq: Number(li.dataset.seq), text: li.querySelector(".text").textContent })),
  );
}

// Exactly the server's messages, in seq order, none twice. The server's history is read
// first, so everything in it must be posted (and stored) before the call. The wait is for
// the page to reach at least its last seq: a page that shows more than the server had then
// fails on the comparison, with both lists, rather than as a timeout.
async function expectServersHistory(page, room, what) {
  const expected = await serverMessages(room);
  await page.waitForFunction(
    (last) => Number(document.querySelector("#messages li:last-child")?.dataset.seq) >= last,
    expected[expected.length - 1].seq,
  );
  const messages = await shown(page);
  const seqs = messages.map((m) => m.seq);
  check(new Set(seqs).size === seqs.length, `${what}: a message shows twice: ${seqs}`);
  sameList(messages, expected, what);
}

async function signIn(page) {
  await page.fill("#mint-user", "alice");
  await page.click("#mint button");
  await page.waitForSelector("#login", { state: "hidden" });
  await page.waitForSelector('#status[data-state="connected"]');
}

const debug = (page) => page.evaluate(() => window.demoDebug);

// Waits until the page has received `count` pushed messages whose text starts with `prefix`.
async function waitForPushes(page, prefix, count) {
  await page.waitForFunction(
    ([prefix, count]) =>
      window.demoDebug.received.filter((f) => f.type === "message" && f.message.text.startsWith(prefix)).length ===
      count,
    [prefix, count],
  );
}

(async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    page.on("pageerror", (error) => console.error(`alice's page: ${error}`));
    await page.goto(`${base}/demo`);
    await signIn(page);
    // Even the first connection starts with `resume` (of an empty cache), not `rooms`.
    let sent = (await debug(page)).sent;
    check(sent[0].type === "resume", `first frame: ${JSON.stringify(sent[0])}`);
    sameList(sent[0].rooms, {}, "a fresh page's resume");
    check(!sent.some((f) => f.type === "rooms"), "no rooms frame");

    // Messages arrive live: three from RouteAPI, one alice sends.
    await page.click('#rooms li[data-room="route-1"]');
    await page.waitForSelector("#compose:not([hidden])");
    for (const text of ["one", "two", "three"]) await post("route-1", text);
    await page.fill("#text", "four");
    await page.click("#compose button");
    // The click only hands "four" to the page, which sends it over the WebSocket: wait for
    // the server's `sent` reply, so the history read below (over REST) already has it.
    // (Read any earlier, it could end at 3 while the page soon showed 4, and the wait for
    // seq 3 as the last message then timed out.)
    await page.waitForFunction(() => window.demoDebug.received.some((f) => f.type === "sent"));
    await expectServersHistory(page, "route-1", "live");
    const { epoch } = await api("GET", "/v1/rooms/route-1");
    check(typeof epoch === "string" && epoch, `route-1's epoch: ${epoch}`);

    // The connection drops and stays down while things happen.
    await page.evaluate(() => {
      window.demoDebug.sent.length = 0;
      window.demoDebug.hold = true;
      window.demoDebug.pageLimit = 3;
      window.demoDropConnection();
    });
    await page.waitForSelector('#status[data-state="reconnecting"]');
    for (let i = 1; i <= 7; i++) await post("route-1", `while away ${i}`);
    await api("PATCH", "/v1/rooms/route-1/messages/2", { text: "two, edited" });
    await post("route-2", "route-2 while away 1");
    await post("route-2", "route-2 while away 2");
    await api("DELETE", "/v1/rooms/route-old/members/alice");
    await api("PUT", "/v1/rooms/route-new", { owner_id: "alice" });
    await post("route-new", "welcome to route-new");
    sameList((await shown(page)).map((m) => m.seq), [1, 2, 3, 4], "shown while offline");

    // It reconnects by itself and resumes. With the catch-up held after the `resumed` reply
    // (5 to 7 of the 8 missed), three more messages are pushed: they must wait for 8 to 12.
    await page.evaluate(() => {
      window.demoDebug.holdCatchUp = true;
      window.demoDebug.hold = false;
    });
    await page.waitForFunction(() => window.demoDebug.resumed.length === 2);
    // `has_more` for route-1: the page knows it is not caught up, and goes on with `sync`.
    const status = await page.getAttribute("#status", "data-state");
    check(status === "resuming", `status after a resume with more to fetch: ${status}`);
    await Promise.all([1, 2, 3].map((i) => post("route-1", `during catch-up ${i}`)));
    await waitForPushes(page, "during catch-up", 3);
    sameList((await shown(page)).map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7], "shown while catching up");
    await page.evaluate(() => (window.demoDebug.holdCatchUp = false));
    await page.waitForSelector('#status[data-state="connected"]');
    await expectServersHistory(page, "route-1", "after the reconnect");
    await page.waitForSelector('#messages li[data-seq="2"] .text:text-is("two, edited")');
    await page.waitForSelector('#messages li[data-seq="2"] .edited-mark');

    const after = await debug(page);
    sent = after.sent.filter((f) => f.type !== "read");
    check(sent[0].type === "resume", `first frame after the drop: ${JSON.stringify(sent[0])}`);
    sameList(sent[0].rooms["route-1"], { seq: 4, epoch }, "route-1 in the resume");
    check(sent[0].rooms["route-old"] && sent[0].rooms["route-2"], `resume lists the cache: ${JSON.stringify(sent[0])}`);
    check(!sent.some((f) => f.type === "rooms"), "no rooms frame after the drop");
    // route-1 had 8 messages to catch up on (7 and the edit): the resume brought 3, and
    // `sync` went on from there.
    const syncs = sent.filter((f) => f.type === "sync");
    check(syncs.every((f) => f.room_id === "route-1" && f.since_seq !== undefined), `syncs: ${JSON.stringify(syncs)}`);
    check(syncs.length >= 2 && syncs[0].since_seq === 7, `paging from seq 7: ${JSON.stringify(syncs)}`);
    const resumed = after.resumed[after.resumed.length - 1];
    sameList(resumed.left, ["route-old"], "left");
    sameList(resumed.reset, [], "reset");
    check(resumed.has_more["route-1"] === true, `has_more: ${JSON.stringify(resumed.has_more)}`);
    const reconnect = after.reconnects[after.reconnects.length - 1];
    check(reconnect.attempt === 0 && reconnect.capMs === 500, `backoff: ${JSON.stringify(reconnect)}`);
    check(reconnect.delayMs >= 0 && reconnect.delayMs <= reconnect.capMs, `jitter: ${JSON.stringify(reconnect)}`);

    // The rooms list: route-old gone, route-new there with its message unread, route-2's two.
    await page.waitForSelector('#rooms li[data-room="route-old"]', { state: "detached" });
    await page.waitForSelector('#rooms li[data-room="route-new"] .unread:text-is("1")');
    await page.waitForSelector('#rooms li[data-room="route-2"] .unread:text-is("2")');
    await page.click('#rooms li[data-room="route-2"]');
    await expectServersHistory(page, "route-2", "route-2");

    // Drops again. Messages posted once the new connection is open but before its `resume`
    // are pushed and in the `resumed` reply as well: shown once.
    await page.click('#rooms li[data-room="route-1"]');
    await page.evaluate(() => {
      window.demoDebug.holdResume = true;
      window.demoDropConnection();
    });
    await page.waitForSelector('#status[data-state="resuming"]');
    await post("route-1", "before the resume 1");
    await post("route-1", "before the resume 2");
    await waitForPushes(page, "before the resume", 2);
    await page.evaluate(() => (window.demoDebug.holdResume = false));
    await page.waitForSelector('#status[data-state="connected"]');
    await expectServersHistory(page, "route-1", "after the second drop");
    const second = await debug(page);
    const reply = second.received.filter((f) => f.type === "resumed").pop();
    sameList(reply.messages["route-1"].map((m) => m.text), ["before the resume 1", "before the resume 2"], "the second resume");

    // A reload resumes from the cache localStorage kept.
    await page.reload();
    await signIn(page);
    let last = (await serverMessages("route-1")).pop().seq;
    let reload = await debug(page);
    sameList(reload.sent[0].rooms["route-1"], { seq: last, epoch }, "route-1 in the resume after a reload");
    check(!reload.sent.some((f) => f.type === "sync"), "nothing to page after a reload");
    await page.click('#rooms li[data-room="route-1"]');
    await expectServersHistory(page, "route-1", "after a reload");

    // A cache from another epoch (here: a forged one) is reset, not continued.
    await page.reload();
    await page.evaluate((key) => {
      const cache = JSON.parse(localStorage.getItem(key));
      const room = cache.rooms["route-1"];
      room.epoch = "another-history";
      room.messages.push({ ...room.messages[0], seq: room.lastSeq + 1, text: "from another history" });
      room.lastSeq += 1;
      localStorage.setItem(key, JSON.stringify(cache));
    }, STORAGE_KEY);
    await signIn(page);
    reload = await debug(page);
    sameList(reload.sent[0].rooms["route-1"], { seq: last + 1, epoch: "another-history" }, "the forged cache");
    sameList(reload.resumed[0].reset, ["route-1"], "reset");
    await page.click('#rooms li[data-room="route-1"]');
    await expectServersHistory(page, "route-1", "after a reset");
    last = (await serverMessages("route-1")).pop().seq;
    console.log(`ok; route-1 shows seqs up to ${last}`);
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
