// chat-engine's demo client: plain JavaScript over the WebSocket protocol
// (docs/protocol.md). It lists rooms with unread counts, shows the room you pick with its
// messages and typing live, sends, edits, deletes and reacts, and opens direct chats.
//
// It keeps a cache of every room's history, in memory and in localStorage (per user), and
// starts every connection with one `resume` that lists what the cache holds: the reply
// brings what the page missed, room by room, and where a room has more than one reply's
// worth the page goes on with `sync` `since_seq`. When the connection drops, the page
// reconnects by itself, with exponential backoff and full jitter, and resumes again.
//
// A room's cache is gapless: it holds the messages from the first one the page has up to
// `lastSeq`, and a pushed message is taken in only as seq `lastSeq + 1`. A push from further
// on (it arrived while a catch-up was still fetching the messages before it) waits in
// `ahead` until the gap is filled. So no message shows twice, out of order, or with a hole
// before it.
//
// Edits, deletes and reactions are messages of their own (`kind` edit/delete/reaction,
// `target_seq`): the page never shows them as bubbles but applies each one, once, to its
// target. History (`resume`, `sync`) returns targets in their current state, so a change in
// the same history page as its target is already in it and is not applied again.
"use strict";

const $ = (id) => document.getElementById(id);

const CHANGE_KINDS = new Set(["edit", "delete", "reaction"]);
const PICKER = ["👍", "❤️", "😂"];

const PAGE_LIMIT = 100; // messages per room in a `resume` reply, and per `sync` catch-up page
const STORED_PER_ROOM = 200; // the latest messages of a room that localStorage keeps
const MAX_RESUME_ROOMS = 1000; // limits.max_resume_rooms; a room left out is fetched anew
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;

const state = {
  me: null,
  token: null,
  devMode: false, // the server mints tokens (/demo/token), so the page refreshes its own
  socket: null,
  everOpened: false, // a connection that never opened is a refused sign-in, not a drop
  attempt: 0, // reconnects since the last `resumed` reply
  nextId: 1,
  pending: new Map(), // request id -> { resolve, reject }
  rooms: new Map(), // room id -> Room (with `unread`)
  history: new Map(), // room id -> the room's cache (see newHistory)
  held: null, // while a `resume` is in flight: the pushes that arrived meanwhile
  catchingUp: new Map(), // room id -> { socket, done } of the catch-up in flight
  current: null,
  editing: null, // { roomId, seq, draft, saving } while an inline edit is open
  typingTimers: new Map(), // user id -> timer that clears their typing line
  lastTypingSent: 0,
  saveTimer: null,
};

// For tests, and for trying reconnects by hand from the browser console. The holds let a
// test act at a given point: while one is true, that step waits.
const debug = {
  sent: [], // the frames the page sent, oldest first (the last 500)
  received: [], // the frames it received, likewise
  resumed: [], // of every `resumed` reply: { reset, left, has_more }
  reconnects: [], // every reconnect scheduled: { attempt, capMs, delayMs }
  refreshed: [], // the `exp` of every token the page replaced with `auth`
  hold: false, // a reconnect that is due waits
  holdResume: false, // a connection that opened waits before it sends `resume`
  holdCatchUp: false, // a catch-up waits before each `sync`
  pageLimit: PAGE_LIMIT, // lower it to watch `resume` + `sync` paging with a few messages
};
const whileHeld = async (hold) => {
  while (debug[hold]) await new Promise((resolve) => setTimeout(resolve, 20));
};
window.demoDebug = debug;
// Closes the connection the way a network failure would; the page reconnects by itself.
window.demoDropConnection = () => {
  if (state.socket) state.socket.close(4000, "demoDropConnection()");
};

const kindOf = (message) => message.kind || "text";
const isChange = (message) => CHANGE_KINDS.has(kindOf(message)) && message.target_seq !== undefined;
// Only `text` and `system` messages count as unread (changes do not).
const countsAsUnread = (message) => kindOf(message) === "text" || kindOf(message) === "system";

// --- Sign-in ---------------------------------------------------------------------------

async function start() {
  const config = await fetch("/demo/config").then((r) => r.json());
  state.devMode = config.dev_mode;
  $("mint").hidden = !config.dev_mode;
  $("mint").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      signIn(await mintToken($("mint-user").value.trim()));
    } catch (error) {
      showLoginError(error.message);
    }
  });
  $("paste").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("paste-token").value.trim());
  });
}

// Development mode only: the server signs a token for any user.
async function mintToken(user) {
  const reply = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user_id: user }),
  });
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.message);
  return body.token;
}

// A connection lives as long as its token: 60 s before `exp` the server sends
// `token_expiring`, and a fresh token of the same user, sent with `auth`, keeps the
// connection open. In development mode the page mints one; otherwise it says the session is
// ending, where a real app would ask its backend for a new token.
async function refreshToken(exp) {
  if (!state.devMode) {
    const at = new Date(exp * 1000).toLocaleTimeString();
    return setStatus("expiring", `your token expires at ${at}: sign in again to stay connected`);
  }
  try {
    const token = await mintToken(state.me);
    await request({ type: "auth", token });
    state.token = token; // reconnects use it too
    debug.refreshed.push(exp);
  } catch (error) {
    showRoomError(error);
  }
}

function signIn(token) {
  state.me = userOfToken(token);
  if (!state.me) return showLoginError("That is not a JWT with a `sub`.");
  state.token = token;
  loadCache();
  connect();
}

function showLoginError(text) {
  $("login-error").textContent = text;
}

function userOfToken(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub;
  } catch {
    return null;
  }
}

// --- Connection ------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/v1/ws?token=${encodeURIComponent(state.token)}`);
  state.socket = socket;
  setStatus("connecting", "connecting…");
  socket.onopen = () => {
    if (!state.everOpened) {
      state.everOpened = true;
      $("login").hidden = true;
      $("chat").hidden = false;
      $("whoami").hidden = false;
      $("me").textContent = state.me;
    }
    resume(socket);
  };
  // A socket that was replaced (closed, then reconnected) has nothing more to say.
  socket.onmessage = (event) => {
    if (state.socket !== socket) return;
    const frame = JSON.parse(event.data);
    debug.received.push(frame);
    if (debug.received.length > 500) debug.received.shift();
    receive(frame);
  };
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    // Pushes held for a `resume` that will not be answered are dropped: the cache did not
    // move past them, so the next connection's `resume` brings them again.
    state.held = null;
    for (const { reject } of state.pending.values()) reject(disconnected("the connection was lost"));
    state.pending.clear();
    if (!state.everOpened) return showLoginError(`The server refused the connection (${event.code}).`);
    scheduleReconnect(event.code);
  };
}

// Exponential backoff with full jitter (docs/protocol.md, "Resume"): wait a random time
// between 0 and min(30 s, 500 ms × 2^attempt), so that after a server restart its apps do
// not all come back at once. `attempt` goes back to 0 only on a `resumed` reply, so a
// connection that opens and fails straight away still backs off further. (A browser does
// not tell a refused token from a network failure, so an expired token retries too.)
function scheduleReconnect(code) {
  const capMs = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  const delayMs = Math.random() * capMs;
  debug.reconnects.push({ attempt: state.attempt, capMs, delayMs });
  state.attempt = Math.min(state.attempt + 1, 20); // far past the cap already
  setStatus("reconnecting", `disconnected (${code}); reconnecting in ${(delayMs / 1000).toFixed(1)} s…`);
  setTimeout(function due() {
    if (debug.hold) return setTimeout(due, 50);
    connect();
  }, delayMs);
}

function setStatus(name, text) {
  $("status").dataset.state = name;
  $("status").textContent = text;
}

function disconnected(text) {
  const error = new Error(text);
  error.code = "disconnected";
  return error;
}

function sendFrame(socket, frame) {
  debug.sent.push(frame);
  if (debug.sent.length > 500) debug.sent.shift();
  socket.send(JSON.stringify(frame));
}

function request(frame) {
  const socket = state.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN) return Promise.reject(disconnected("not connected; reconnecting…"));
  const id = `r${state.nextId++}`;
  const reply = new Promise((resolve, reject) => state.pending.set(id, { resolve, reject }));
  sendFrame(socket, { ...frame, id });
  return reply;
}

function receive(frame) {
  if (frame.id !== undefined && state.pending.has(frame.id)) {
    const { resolve, reject } = state.pending.get(frame.id);
    state.pending.delete(frame.id);
    if (frame.type !== "error") return resolve(frame);
    const error = new Error(frame.message);
    error.code = frame.code;
    return reject(error);
  }
  if (frame.type === "token_expiring") return void refreshToken(frame.exp);
  // Pushes start as soon as the connection opens, before the `resume` reply: they wait for
  // it and are then merged into the cache it brings, by seq.
  if (state.held) return void state.held.push(frame);
  switch (frame.type) {
    case "message":
      return onMessage(frame.message);
    case "joined": {
      // A `joined` held during a resume may name a room its reply already brought.
      if (state.rooms.has(frame.room.room_id)) return;
      state.rooms.set(frame.room.room_id, { ...frame.room, unread: 0 });
      renderRooms();
      return void catchUp(frame.room.room_id);
    }
    case "left":
      state.rooms.delete(frame.room_id);
      state.history.delete(frame.room_id);
      saveSoon();
      if (state.current === frame.room_id) selectRoom(null);
      return renderRooms();
    case "member_joined":
    case "member_left": {
      const room = state.rooms.get(frame.room_id);
      if (!room) return;
      const others = room.members.filter((m) => m !== frame.user_id);
      room.members = frame.type === "member_joined" ? [...others, frame.user_id] : others;
      if (state.current === frame.room_id) renderTitle();
      return;
    }
    case "typing":
      return onTyping(frame.room_id, frame.user_id);
    case "error":
      return showRoomError(frame);
  }
}

function showRoomError(error) {
  const text = error.message || String(error);
  $("room-error").textContent = error.code ? `${text} (${error.code})` : text;
}

function clearRoomError() {
  $("room-error").textContent = "";
}

// --- Resume ----------------------------------------------------------------------------

// The start of every connection: one `resume` with the seq and epoch of every room cached,
// then `sync` for the rooms that have more, then live pushes.
async function resume(socket) {
  setStatus("resuming", "connected; catching up…");
  state.held = [];
  await whileHeld("holdResume");
  if (state.socket !== socket) return;
  const listed = {};
  let count = 0;
  for (const [roomId, history] of state.history) {
    if (history.lastSeq === null || !history.epoch) continue;
    if (count++ === MAX_RESUME_ROOMS) break;
    listed[roomId] = { seq: history.lastSeq, epoch: history.epoch };
  }
  let reply;
  try {
    reply = await request({ type: "resume", rooms: listed, limit: debug.pageLimit });
  } catch (error) {
    if (state.socket !== socket) return; // dropped meanwhile: the next connection resumes
    // Refused (a bad cache, the server unavailable): start over from nothing next time.
    showRoomError(error);
    state.history.clear();
    saveCache();
    return socket.close(4001, "resume refused");
  }
  if (state.socket !== socket) return;
  state.attempt = 0;
  const more = applyResumed(reply, listed);
  const held = state.held;
  state.held = null;
  for (const frame of held) receive(frame);
  afterResume();
  await Promise.all(more.map(catchUp));
  if (state.socket === socket) setStatus("connected", "connected");
}

// Applies a `resumed` reply: drops the rooms left, starts the rooms reset or not cached over
// from the latest messages it brings, and appends what it brings to the others. Returns the
// rooms that have more to fetch.
function applyResumed(reply, listed) {
  debug.resumed.push({ reset: reply.reset, left: reply.left, has_more: reply.has_more });
  const reset = new Set(reply.reset);
  const rooms = new Map(reply.rooms.map((room) => [room.room_id, room]));
  // `left` names the listed rooms the user is no longer in; any other room the reply does
  // not list (one joined since the last connection, not cached yet) is gone as well.
  for (const roomId of [...state.history.keys()]) if (!rooms.has(roomId)) state.history.delete(roomId);
  state.rooms = rooms;
  const more = [];
  for (const room of reply.rooms) {
    const roomId = room.room_id;
    const messages = reply.messages[roomId] || [];
    const history = state.history.get(roomId);
    if (history && listed[roomId] && !reset.has(roomId)) {
      applyPage(roomId, history, messages); // what came after the seq the page listed
      if (reply.has_more[roomId]) more.push(roomId);
    } else {
      // Not cached, or cached from another history: the latest messages replace the cache.
      // (Their `has_more` says older messages exist, which the demo does not fetch.)
      const fresh = newHistory();
      state.history.set(roomId, fresh);
      loadLatest(roomId, fresh, room.epoch, messages);
    }
  }
  saveSoon();
  return more;
}

function afterResume() {
  if (state.current && !state.rooms.has(state.current)) selectRoom(null);
  renderTitle();
  renderMessages();
  markRead();
  renderRooms();
}

// --- The cache of a room's history -----------------------------------------------------

// `messages`: seq -> message, every message from the first one the page has up to
// `lastSeq`, with the changes up to there applied (the changes themselves are not kept).
// `ahead`: seq -> pushed message beyond `lastSeq + 1`, waiting for the ones before it.
// `lastSeq` null: nothing loaded yet, so every push waits. `epoch`: the history the seqs
// belong to (docs/protocol.md, "History epochs").
function newHistory() {
  return { epoch: null, lastSeq: null, messages: new Map(), ahead: new Map() };
}

// The latest messages of a room (from a `resume` reset or a `sync` with no cursor) as the
// start of its cache. With none (a new room, or one retention emptied), the cache starts at
// the room's last seq.
function loadLatest(roomId, history, epoch, messages) {
  const room = state.rooms.get(roomId);
  history.epoch = epoch;
  history.lastSeq = messages.length ? messages[0].seq - 1 : (room && room.last_seq) || 0;
  history.messages.clear();
  applyPage(roomId, history, messages);
}

// Appends a history page (the messages after `lastSeq`, oldest first) to a room's cache.
// The page's messages are in their current state, so a change whose target is in the same
// page is already in it; a change to an earlier message the cache holds is applied to it.
function applyPage(roomId, history, messages) {
  const inPage = new Set(messages.filter((m) => !isChange(m)).map((m) => m.seq));
  for (const message of messages) {
    if (message.seq <= history.lastSeq) continue; // held already
    append(roomId, history, message, !inPage.has(message.target_seq));
  }
  drain(roomId, history);
}

// Takes in one pushed message. Returns the messages to (re)render.
function ingest(roomId, history, message) {
  if (history.lastSeq !== null && message.seq <= history.lastSeq) return []; // held already
  if (history.lastSeq === null || message.seq > history.lastSeq + 1) {
    history.ahead.set(message.seq, message); // wait for the messages before it
    return [];
  }
  return [append(roomId, history, message, true), ...drain(roomId, history)].filter(Boolean);
}

// Takes in the waiting pushes that now follow on, and drops those a page brought already.
function drain(roomId, history) {
  const shown = [];
  if (history.lastSeq === null) return shown;
  for (const seq of [...history.ahead.keys()]) if (seq <= history.lastSeq) history.ahead.delete(seq);
  while (history.ahead.has(history.lastSeq + 1)) {
    const next = history.ahead.get(history.lastSeq + 1);
    history.ahead.delete(next.seq);
    shown.push(append(roomId, history, next, true));
  }
  return shown.filter(Boolean);
}

// Puts the message that follows `lastSeq` into the cache: a message is kept, a change is
// applied to its target (when `apply`, and when the cache holds the target). Returns what
// to (re)render: the message, the changed target, or null.
function append(roomId, history, message, apply) {
  history.lastSeq = message.seq;
  noteInRoom(roomId, message);
  acknowledgeSoon(roomId, message.seq);
  if (!isChange(message)) {
    history.messages.set(message.seq, message);
    return message;
  }
  const target = history.messages.get(message.target_seq);
  if (!target || !apply) return null; // older than the cache, or already in its target
  applyChange(target, message);
  return target;
}

// `received` tells the server the page has a room's messages up to a seq, so this user gets
// no push notification for them: one frame per room for what arrived together.
const toAcknowledge = new Map();

function acknowledgeSoon(roomId, seq) {
  if (toAcknowledge.size === 0) setTimeout(sendAcknowledgements, 0);
  toAcknowledge.set(roomId, Math.max(seq, toAcknowledge.get(roomId) || 0));
}

function sendAcknowledgements() {
  const socket = state.socket;
  if (socket && socket.readyState === WebSocket.OPEN) {
    for (const [roomId, seq] of toAcknowledge) sendFrame(socket, { type: "received", room_id: roomId, seq });
  }
  toAcknowledge.clear();
}

// Moves a room's last seq and ts on. A message beyond the room's `last_seq` is one its
// `unread` (as the server counted it) does not include yet.
function noteInRoom(roomId, message) {
  const room = state.rooms.get(roomId);
  if (!room || message.seq <= room.last_seq) return;
  room.last_seq = message.seq;
  room.last_ts = Math.max(room.last_ts || 0, message.ts);
  if (roomId !== state.current && message.sender !== state.me && countsAsUnread(message)) {
    room.unread = (room.unread || 0) + 1;
  }
}

// localStorage keeps each user's cache across reloads: `resume` then brings only what came
// since. Writes are batched; a full or disabled storage leaves the cache in memory only.
const storageKey = () => `chat-engine-demo:${state.me}`;

function loadCache() {
  state.history = new Map();
  let stored = null;
  try {
    stored = JSON.parse(localStorage.getItem(storageKey()));
  } catch {
    return;
  }
  if (!stored || stored.version !== 1) return;
  for (const [roomId, room] of Object.entries(stored.rooms || {})) {
    if (typeof room.epoch !== "string" || !Number.isInteger(room.lastSeq) || !Array.isArray(room.messages)) continue;
    const history = newHistory();
    history.epoch = room.epoch;
    history.lastSeq = room.lastSeq;
    for (const message of room.messages) history.messages.set(message.seq, message);
    state.history.set(roomId, history);
  }
}

function saveSoon() {
  if (!state.saveTimer) state.saveTimer = setTimeout(saveCache, 300);
}

function saveCache() {
  clearTimeout(state.saveTimer);
  state.saveTimer = null;
  if (!state.me) return;
  const rooms = {};
  for (const [roomId, history] of state.history) {
    if (history.lastSeq === null || !history.epoch) continue;
    const messages = [...history.messages.values()].slice(-STORED_PER_ROOM);
    rooms[roomId] = { epoch: history.epoch, lastSeq: history.lastSeq, messages };
  }
  try {
    localStorage.setItem(storageKey(), JSON.stringify({ version: 1, rooms }));
  } catch {
    // Full or disabled: the cache lives on in memory.
  }
}

addEventListener("pagehide", saveCache);

// The effect of a change on its target (docs/protocol.md, "Message changes"). Applying a change
// whose effect is already there changes nothing.
function applyChange(target, change) {
  switch (kindOf(change)) {
    case "edit":
      if (target.deleted || (target.edited_ts !== undefined && target.edited_ts > change.ts)) return;
      target.text = change.text;
      if (change.data !== undefined) target.data = change.data;
      else delete target.data;
      target.edited_ts = change.ts;
      return;
    case "delete":
      target.deleted = true;
      target.text = "";
      delete target.data;
      return;
    case "reaction": {
      const reactions = target.reactions || {};
      const users = (reactions[change.text] || []).filter((u) => u !== change.sender);
      if (!change.removed) {
        const had = (reactions[change.text] || []).includes(change.sender);
        // Adding one the user already has changes nothing (and keeps their place).
        if (had) return;
        users.push(change.sender);
      }
      if (users.length) reactions[change.text] = users;
      else delete reactions[change.text];
      if (Object.keys(reactions).length) target.reactions = reactions;
      else delete target.reactions;
      return;
    }
  }
}

// --- Rooms and messages ----------------------------------------------------------------

function onMessage(message) {
  const roomId = message.room_id;
  if (!state.rooms.has(roomId)) return;
  if (!state.history.has(roomId)) state.history.set(roomId, newHistory());
  const history = state.history.get(roomId);
  const shown = ingest(roomId, history, message);
  // Pushes come in seq order, from the moment the connection opens: one waits only while a
  // catch-up fetches what came before it. Should one wait otherwise, fetch the gap.
  if (history.ahead.size) catchUp(roomId);
  if (state.current === roomId) {
    if (!isChange(message)) clearTyping(message.sender);
    for (const each of shown) renderMessage(each);
    if (shown.length) markRead();
  }
  renderRooms();
  if (shown.length) saveSoon();
}

// Fetches what a room's cache lacks, with `sync`: its latest messages when it has none
// yet, then the pages after `lastSeq` while the server has more or pushes wait in `ahead`.
// One catch-up per room at a time: callers share the one in flight.
function catchUp(roomId) {
  const running = state.catchingUp.get(roomId);
  if (running && running.socket === state.socket) return running.done;
  if (!state.history.has(roomId)) state.history.set(roomId, newHistory());
  const entry = { socket: state.socket, done: null };
  entry.done = fetchMissing(roomId, entry.socket).finally(() => {
    if (state.catchingUp.get(roomId) === entry) state.catchingUp.delete(roomId);
  });
  state.catchingUp.set(roomId, entry);
  return entry.done;
}

async function fetchMissing(roomId, socket) {
  try {
    for (;;) {
      const history = state.history.get(roomId);
      if (!history || state.socket !== socket) return;
      await whileHeld("holdCatchUp");
      if (state.history.get(roomId) !== history || state.socket !== socket) return;
      const latest = history.lastSeq === null;
      const frame = latest
        ? { type: "sync", room_id: roomId }
        : { type: "sync", room_id: roomId, since_seq: history.lastSeq, limit: debug.pageLimit };
      const reply = await request(frame);
      // Left meanwhile, or reconnected (and that connection's `resume` takes over).
      if (state.history.get(roomId) !== history || state.socket !== socket) return;
      if (!latest && reply.epoch !== history.epoch) {
        // The room's history was replaced under the page (a restore): start it over.
        state.history.set(roomId, newHistory());
        continue;
      }
      const before = history.lastSeq;
      if (latest) loadLatest(roomId, history, reply.epoch, reply.messages);
      else applyPage(roomId, history, reply.messages);
      if (state.current === roomId) {
        renderMessages();
        markRead();
      }
      renderRooms();
      saveSoon();
      // After a `since_seq` page, `has_more` says more follow. (After the latest page it
      // says older ones exist, which the demo does not fetch.)
      const more = !latest && reply.has_more;
      if (history.lastSeq === before || (!more && !history.ahead.size)) return;
    }
  } catch (error) {
    if (error.code !== "disconnected" && state.current === roomId) showRoomError(error);
  }
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  const rooms = [...state.rooms.values()].sort((a, b) => b.last_ts - a.last_ts || a.room_id.localeCompare(b.room_id));
  for (const room of rooms) {
    const item = document.createElement("li");
    item.dataset.room = room.room_id;
    item.dataset.lastSeq = String(room.last_seq || 0);
    item.className = room.room_id === state.current ? "selected" : "";
    const name = document.createElement("span");
    name.textContent = roomName(room);
    const unread = document.createElement("span");
    unread.className = "unread";
    unread.textContent = room.unread ? String(room.unread) : "";
    item.append(name, unread);
    item.addEventListener("click", () => selectRoom(room.room_id));
    list.append(item);
  }
}

function roomName(room) {
  if (room.kind !== "direct") return room.room_id;
  const other = room.members.find((m) => m !== state.me);
  return `@ ${other || room.room_id}`;
}

async function selectRoom(roomId) {
  state.current = roomId;
  state.editing = null;
  $("compose").hidden = !roomId;
  $("typing").textContent = "";
  clearRoomError();
  renderTitle();
  renderRooms();
  renderMessages(); // what the cache holds, at once
  if (!roomId) return;
  const history = state.history.get(roomId);
  // A room joined or opened since the last `resume` may not be loaded yet. (While a resume
  // is in flight, or the page is offline, the resume brings it.)
  if ((!history || history.lastSeq === null) && state.socket && !state.held) {
    await catchUp(roomId);
    if (state.current !== roomId) return; // another room was picked meanwhile
    renderMessages();
  }
  markRead();
  renderRooms();
  $("text").focus();
}

function renderTitle() {
  const room = state.rooms.get(state.current);
  $("room-title").textContent = room ? `${roomName(room)} · ${room.members.join(", ")}` : "Pick a room";
}

function renderMessages() {
  const list = $("messages");
  list.replaceChildren();
  const history = state.history.get(state.current);
  if (!history) return;
  const caret = editorCaret();
  for (const message of [...history.messages.values()].sort((a, b) => a.seq - b.seq)) {
    list.append(messageItem(message));
  }
  list.scrollTop = list.scrollHeight;
  if (caret) focusEditor(caret);
}

// Shows one message of the current room: in place if it is on screen, else at the end (a new
// message), else by rendering the whole list.
function renderMessage(message) {
  const list = $("messages");
  const existing = list.querySelector(`li[data-seq="${message.seq}"]`);
  if (existing) {
    // Re-rendering an open editor keeps its draft (in state.editing), focus and caret.
    const caret = editorCaret();
    existing.replaceWith(messageItem(message));
    if (caret) focusEditor(caret);
    return;
  }
  const last = list.lastElementChild;
  if (last && Number(last.dataset.seq) > message.seq) return renderMessages();
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(messageItem(message));
  if (atBottom || message.sender === state.me) list.scrollTop = list.scrollHeight;
}

function messageItem(message) {
  const kind = kindOf(message);
  const mine = message.sender === state.me && message.sender !== null;
  const item = document.createElement("li");
  item.dataset.seq = String(message.seq);
  item.dataset.kind = kind;
  if (message.sender) item.dataset.sender = message.sender;
  item.classList.toggle("system", kind === "system");
  item.classList.toggle("mine", kind !== "system" && mine);
  item.classList.toggle("deleted", !!message.deleted);
  item.classList.toggle("edited", message.edited_ts !== undefined && !message.deleted);

  const from = document.createElement("span");
  from.className = "from";
  from.textContent = `${message.sender || "system"} · #${message.seq}`;
  item.append(from);

  const editing = state.editing && state.editing.roomId === message.room_id && state.editing.seq === message.seq;
  if (message.deleted) {
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = "message deleted";
    item.append(text);
    return item;
  }
  if (editing) {
    item.append(editor(message));
  } else {
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    item.append(text);
    if (message.edited_ts !== undefined) {
      const edited = document.createElement("span");
      edited.className = "edited-mark";
      edited.textContent = "(edited)";
      edited.title = `edited ${new Date(message.edited_ts).toLocaleString()}`;
      item.append(" ", edited);
    }
  }

  // Under the text: reaction chips on the left, the message's actions on the right.
  const footer = document.createElement("div");
  footer.className = "footer";
  const reactions = Object.entries(message.reactions || {}).filter(([, users]) => users.length);
  if (reactions.length) {
    const chips = document.createElement("span");
    chips.className = "reactions";
    for (const [reaction, users] of reactions) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.dataset.action = "toggle-reaction";
      chip.dataset.reaction = reaction;
      chip.dataset.count = String(users.length);
      const reacted = users.includes(state.me);
      chip.classList.toggle("reacted", reacted);
      chip.setAttribute("aria-pressed", String(reacted));
      chip.title = users.join(", ");
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = String(users.length);
      chip.append(`${reaction} `, count);
      chips.append(chip);
    }
    footer.append(chips);
  }

  const actions = document.createElement("span");
  actions.className = "actions";
  const picker = document.createElement("span");
  picker.className = "picker";
  for (const reaction of PICKER) {
    picker.append(actionButton("react", reaction, `React ${reaction}`, { reaction }));
  }
  actions.append(picker);
  if (mine && kind === "text" && !editing) {
    actions.append(actionButton("edit", "Edit", "Edit this message"));
    actions.append(actionButton("delete", "Delete", "Delete this message"));
  }
  footer.append(actions);
  item.append(footer);
  return item;
}

function actionButton(action, label, title, data = {}) {
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.action = action;
  Object.assign(button.dataset, data);
  button.title = title;
  button.textContent = label;
  return button;
}

// The inline editor: Enter saves, Escape cancels.
function editor(message) {
  const input = document.createElement("input");
  input.className = "edit-input";
  input.value = state.editing.draft;
  input.disabled = !!state.editing.saving;
  input.setAttribute("aria-label", "Edit message; Enter saves, Escape cancels");
  input.addEventListener("input", () => {
    if (state.editing) state.editing.draft = input.value;
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      saveEdit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      cancelEdit();
    }
  });
  const hint = document.createElement("span");
  hint.className = "edit-hint";
  hint.textContent = "Enter saves · Esc cancels";
  const wrap = document.createElement("span");
  wrap.className = "editor";
  wrap.append(input, hint);
  return wrap;
}

// Where the caret is in the open editor, if it has the focus.
function editorCaret() {
  const active = document.activeElement;
  if (!active || !active.classList.contains("edit-input")) return null;
  return [active.selectionStart, active.selectionEnd];
}

function focusEditor(caret) {
  const input = $("messages").querySelector(".edit-input:not([disabled])");
  if (!input) return;
  const [start, end] = caret || [input.value.length, input.value.length];
  input.focus();
  input.setSelectionRange(start, end);
}

function currentMessage(seq) {
  const history = state.history.get(state.current);
  return history ? history.messages.get(seq) : undefined;
}

function startEdit(seq) {
  const message = currentMessage(seq);
  if (!message || message.deleted) return;
  const before = state.editing;
  state.editing = { roomId: state.current, seq, draft: message.text, saving: false };
  if (before && before.roomId === state.current) {
    const previous = currentMessage(before.seq);
    if (previous) renderMessage(previous);
  }
  renderMessage(message);
  focusEditor();
}

function cancelEdit() {
  const editing = state.editing;
  state.editing = null;
  if (!editing) return;
  const message = currentMessage(editing.seq);
  if (message && editing.roomId === state.current) renderMessage(message);
  $("text").focus();
}

async function saveEdit() {
  const editing = state.editing;
  if (!editing || editing.saving) return;
  const message = currentMessage(editing.seq);
  if (!message || message.deleted) return cancelEdit();
  const text = editing.draft;
  if (!text.trim()) return showRoomError("An edit needs some text; Delete removes a message.");
  if (text === message.text) return cancelEdit();
  editing.saving = true;
  renderMessage(message);
  // The demo edits the text only: the message's `data` (which it does not show) goes along.
  const frame = { type: "edit", room_id: editing.roomId, seq: editing.seq, text, client_msg_id: crypto.randomUUID() };
  if (message.data !== undefined) frame.data = message.data;
  try {
    const reply = await request(frame);
    if (state.editing === editing) state.editing = null;
    clearRoomError();
    appliedByReply(reply, { kind: "edit", target_seq: frame.seq, text, data: frame.data, room_id: frame.room_id });
    if (editing.roomId === state.current) {
      renderMessage(currentMessage(editing.seq) || message);
      $("text").focus();
    }
  } catch (error) {
    editing.saving = false;
    showRoomError(error);
    if (state.editing === editing && editing.roomId === state.current) {
      renderMessage(message);
      focusEditor();
    }
  }
}

async function deleteMessage(seq) {
  const roomId = state.current;
  if (state.editing && state.editing.seq === seq) state.editing = null;
  try {
    const reply = await request({ type: "delete", room_id: roomId, seq });
    clearRoomError();
    appliedByReply(reply, { kind: "delete", target_seq: seq, text: "", room_id: roomId });
  } catch (error) {
    showRoomError(error);
  }
}

async function react(seq, reaction, removed) {
  const roomId = state.current;
  const frame = { type: "react", room_id: roomId, seq, reaction };
  if (removed) frame.removed = true;
  try {
    const reply = await request(frame);
    clearRoomError();
    const change = { kind: "reaction", target_seq: seq, text: reaction, room_id: roomId };
    if (removed) change.removed = true;
    appliedByReply(reply, change);
  } catch (error) {
    showRoomError(error);
  }
}

// A `sent` reply names the change the server stored: apply it now rather than wait for its
// push (which then finds it held already), if it is the room's next seq. If not, messages
// before it are still on their way, and its push, which comes after them, applies it. An
// `ok` reply means the change changed nothing.
function appliedByReply(reply, change) {
  if (reply.type !== "sent") return;
  const history = state.history.get(change.room_id);
  if (!history || history.lastSeq === null || reply.seq !== history.lastSeq + 1) return;
  if (change.data === undefined) delete change.data;
  onMessage({ ...change, seq: reply.seq, ts: reply.ts, sender: state.me });
}

$("messages").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  const item = button && button.closest("li[data-seq]");
  if (!item) return;
  const seq = Number(item.dataset.seq);
  switch (button.dataset.action) {
    case "edit":
      return startEdit(seq);
    case "delete":
      return deleteMessage(seq);
    case "react":
      return react(seq, button.dataset.reaction, false);
    case "toggle-reaction": {
      const message = currentMessage(seq);
      const users = (message && message.reactions && message.reactions[button.dataset.reaction]) || [];
      return react(seq, button.dataset.reaction, users.includes(state.me));
    }
  }
});

function markRead() {
  const room = state.rooms.get(state.current);
  const history = state.history.get(state.current);
  if (!room || !history || history.lastSeq === null) return;
  room.unread = 0;
  // Read up to what the page shows, which a catch-up may not have reached the room's end.
  if (history.lastSeq > 0) request({ type: "read", room_id: room.room_id, seq: history.lastSeq }).catch(() => {});
}

// --- Typing ----------------------------------------------------------------------------

function onTyping(roomId, user) {
  if (roomId !== state.current || user === state.me) return;
  clearTimeout(state.typingTimers.get(user));
  state.typingTimers.set(user, setTimeout(() => clearTyping(user), 3000));
  renderTyping();
}

function clearTyping(user) {
  clearTimeout(state.typingTimers.get(user));
  state.typingTimers.delete(user);
  renderTyping();
}

function renderTyping() {
  const users = [...state.typingTimers.keys()];
  $("typing").textContent = users.length ? `${users.join(", ")} ${users.length > 1 ? "are" : "is"} typing…` : "";
}

// --- Forms -----------------------------------------------------------------------------

$("compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim() || !state.current) return;
  $("text").value = "";
  state.lastTypingSent = 0; // the next keystroke starts a new message
  try {
    await request({ type: "send", room_id: state.current, text, client_msg_id: crypto.randomUUID() });
  } catch (error) {
    showRoomError(error);
    // Not sent (or, if the connection dropped, maybe sent: the resume will show it): give
    // the text back rather than lose it.
    if (!$("text").value) $("text").value = text;
  }
});

$("text").addEventListener("input", () => {
  const now = Date.now();
  if (!state.current || now - state.lastTypingSent < 2000) return;
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
  state.lastTypingSent = now;
  sendFrame(state.socket, { type: "typing", room_id: state.current });
});

$("direct").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const reply = await request({ type: "direct", user_id: $("direct-user").value.trim() });
    if (!state.rooms.has(reply.room.room_id)) state.rooms.set(reply.room.room_id, { ...reply.room, unread: 0 });
    $("direct-user").value = "";
    selectRoom(reply.room.room_id);
  } catch (error) {
    showRoomError(error);
  }
});

start();
