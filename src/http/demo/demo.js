// chat-engine's demo client: plain JavaScript over the WebSocket protocol
// (docs/protocol.md). It lists rooms with unread counts, syncs the room you pick, shows
// messages and typing live, sends, edits, deletes and reacts, and opens direct chats.
//
// Edits, deletes and reactions are messages of their own (`kind` edit/delete/reaction,
// `target_seq`): the page never shows them as bubbles but applies each one, once, to its
// target. History (`sync`) returns targets in their current state, so the changes a sync
// reply holds are only marked as applied.
"use strict";

const $ = (id) => document.getElementById(id);

const CHANGE_KINDS = new Set(["edit", "delete", "reaction"]);
const PICKER = ["👍", "❤️", "😂"];

const state = {
  me: null,
  socket: null,
  nextId: 1,
  pending: new Map(), // request id -> { resolve, reject }
  rooms: new Map(), // room id -> Room (with `unread`)
  history: new Map(), // room id -> { messages: Map(seq -> message), applied: Set(change seqs) }, once synced
  syncing: new Map(), // room id -> messages pushed while its sync is in flight
  current: null,
  editing: null, // { roomId, seq, draft, saving } while an inline edit is open
  typingTimers: new Map(), // user id -> timer that clears their typing line
  lastTypingSent: 0,
};

const kindOf = (message) => message.kind || "text";
const isChange = (message) => CHANGE_KINDS.has(kindOf(message)) && message.target_seq !== undefined;
// Only `text` and `system` messages count as unread (changes do not).
const countsAsUnread = (message) => kindOf(message) === "text" || kindOf(message) === "system";

// --- Sign-in ---------------------------------------------------------------------------

async function start() {
  const config = await fetch("/demo/config").then((r) => r.json());
  $("mint").hidden = !config.dev_mode;
  $("mint").addEventListener("submit", async (event) => {
    event.preventDefault();
    const user = $("mint-user").value.trim();
    const reply = await fetch("/demo/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: user }),
    });
    const body = await reply.json();
    if (!reply.ok) return showLoginError(body.message);
    connect(body.token);
  });
  $("paste").addEventListener("submit", (event) => {
    event.preventDefault();
    connect($("paste-token").value.trim());
  });
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

function connect(token) {
  state.me = userOfToken(token);
  if (!state.me) return showLoginError("That is not a JWT with a `sub`.");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/v1/ws?token=${encodeURIComponent(token)}`);
  state.socket = socket;
  socket.onopen = async () => {
    $("login").hidden = true;
    $("chat").hidden = false;
    $("whoami").hidden = false;
    $("me").textContent = state.me;
    setStatus("connected");
    const reply = await request({ type: "rooms" });
    for (const room of reply.rooms) state.rooms.set(room.room_id, room);
    renderRooms();
  };
  socket.onmessage = (event) => receive(JSON.parse(event.data));
  socket.onclose = (event) => {
    if ($("chat").hidden) return showLoginError(`The server refused the connection (${event.code}).`);
    setStatus(`disconnected (${event.code}); reload to reconnect`);
  };
}

function setStatus(text) {
  $("status").textContent = text;
}

function request(frame) {
  const id = `r${state.nextId++}`;
  state.socket.send(JSON.stringify({ ...frame, id }));
  return new Promise((resolve, reject) => state.pending.set(id, { resolve, reject }));
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
  switch (frame.type) {
    case "message":
      return onMessage(frame.message);
    case "joined":
      state.rooms.set(frame.room.room_id, { ...frame.room, unread: 0 });
      return renderRooms();
    case "left":
      state.rooms.delete(frame.room_id);
      state.history.delete(frame.room_id);
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

// --- The model of a room's history -----------------------------------------------------

// Puts one message into a synced room's history. Returns the message to (re)render: the new
// message itself, the target a change changed, or null when nothing visible changed.
function ingest(history, message) {
  if (isChange(message)) {
    if (history.applied.has(message.seq)) return null;
    history.applied.add(message.seq);
    const target = history.messages.get(message.target_seq);
    if (!target) return null; // older than what the page loaded: nothing to show
    applyChange(target, message);
    return target;
  }
  // A message the page has already keeps the state its changes gave it.
  if (history.messages.has(message.seq)) return null;
  history.messages.set(message.seq, message);
  return message;
}

// The effect of a change on its target (PROTOCOL.md, "Message changes"). Applying a change
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

// A sync reply replaces the page's copy of a room: its targets are in their current state,
// so the changes it holds are marked as applied, not applied again. Messages pushed while the
// sync was in flight and missing from the reply are applied on top.
function loadHistory(roomId, messages, pushedMeanwhile) {
  const history = { messages: new Map(), applied: new Set() };
  const inReply = new Set();
  for (const message of messages) {
    inReply.add(message.seq);
    if (isChange(message)) history.applied.add(message.seq);
    else history.messages.set(message.seq, message);
  }
  for (const message of pushedMeanwhile) if (!inReply.has(message.seq)) ingest(history, message);
  state.history.set(roomId, history);
}

// --- Rooms and messages ----------------------------------------------------------------

function onMessage(message) {
  const room = state.rooms.get(message.room_id);
  if (room) {
    room.last_seq = Math.max(room.last_seq || 0, message.seq);
    room.last_ts = Math.max(room.last_ts || 0, message.ts);
  }
  const history = state.history.get(message.room_id);
  const shown = history ? ingest(history, message) : null;
  if (!history && state.syncing.has(message.room_id)) state.syncing.get(message.room_id).push(message);
  if (state.current === message.room_id) {
    if (!isChange(message)) clearTyping(message.sender);
    if (shown) renderMessage(shown);
    markRead();
  } else if (room && message.sender !== state.me && countsAsUnread(message)) {
    room.unread = (room.unread || 0) + 1;
  }
  renderRooms();
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
  if (!roomId) return renderMessages();
  if (!state.history.has(roomId) && !state.syncing.has(roomId)) {
    renderMessages();
    state.syncing.set(roomId, []);
    try {
      const reply = await request({ type: "sync", room_id: roomId, limit: 100 });
      loadHistory(roomId, reply.messages, state.syncing.get(roomId));
    } catch (error) {
      if (state.current === roomId) showRoomError(error);
      return;
    } finally {
      state.syncing.delete(roomId);
    }
  }
  if (state.current !== roomId) return; // another room was picked meanwhile
  renderMessages();
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
// push (which then finds it applied). An `ok` reply means the change changed nothing.
function appliedByReply(reply, change) {
  if (reply.type !== "sent") return;
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
  if (!room) return;
  room.unread = 0;
  if (room.last_seq > 0) request({ type: "read", room_id: room.room_id, seq: room.last_seq }).catch(() => {});
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
  }
});

$("text").addEventListener("input", () => {
  const now = Date.now();
  if (!state.current || now - state.lastTypingSent < 2000) return;
  state.lastTypingSent = now;
  state.socket.send(JSON.stringify({ type: "typing", room_id: state.current }));
});

$("direct").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const reply = await request({ type: "direct", user_id: $("direct-user").value.trim() });
    if (!state.rooms.has(reply.room.room_id)) state.rooms.set(reply.room.room_id, { ...reply.room, unread: 0 });
    $("direct-user").value = "";
    selectRoom(reply.room.room_id);
  } catch (error) {
    setStatus(error.message);
  }
});

start();
