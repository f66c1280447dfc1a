// chat-engine's demo client: plain JavaScript over the WebSocket protocol (README.md,
// "WebSocket protocol"). It lists rooms with unread counts, syncs the room you pick, shows
// messages and typing live, sends, and opens direct chats.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  me: null,
  socket: null,
  nextId: 1,
  pending: new Map(), // request id -> { resolve, reject }
  rooms: new Map(), // room id -> Room (with `unread`)
  messages: new Map(), // room id -> messages by seq, once synced
  current: null,
  typingTimers: new Map(), // user id -> timer that clears their typing line
  lastTypingSent: 0,
};

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
    return frame.type === "error" ? reject(new Error(frame.message)) : resolve(frame);
  }
  switch (frame.type) {
    case "message":
      return onMessage(frame.message);
    case "joined":
      state.rooms.set(frame.room.room_id, { ...frame.room, unread: 0 });
      return renderRooms();
    case "left":
      state.rooms.delete(frame.room_id);
      state.messages.delete(frame.room_id);
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
      return ($("room-error").textContent = frame.message);
  }
}

// --- Rooms and messages ----------------------------------------------------------------

function onMessage(message) {
  const room = state.rooms.get(message.room_id);
  if (room) {
    room.last_seq = Math.max(room.last_seq, message.seq);
    room.last_ts = Math.max(room.last_ts, message.ts);
  }
  const known = state.messages.get(message.room_id);
  if (known) known.set(message.seq, message);
  if (state.current === message.room_id) {
    clearTyping(message.sender);
    renderMessages();
    markRead();
  } else if (room && message.sender !== state.me) {
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
  $("compose").hidden = !roomId;
  $("typing").textContent = "";
  $("room-error").textContent = "";
  renderTitle();
  renderRooms();
  if (!roomId) return renderMessages();
  if (!state.messages.has(roomId)) {
    const reply = await request({ type: "sync", room_id: roomId, limit: 100 });
    const known = state.messages.get(roomId) || new Map();
    for (const message of reply.messages) known.set(message.seq, message);
    state.messages.set(roomId, known);
  }
  renderMessages();
  markRead();
  $("text").focus();
}

function renderTitle() {
  const room = state.rooms.get(state.current);
  $("room-title").textContent = room ? `${roomName(room)} · ${room.members.join(", ")}` : "Pick a room";
}

function renderMessages() {
  const list = $("messages");
  list.replaceChildren();
  const known = state.messages.get(state.current);
  if (!known) return;
  for (const message of [...known.values()].sort((a, b) => a.seq - b.seq)) {
    const item = document.createElement("li");
    item.className = message.kind === "system" ? "system" : message.sender === state.me ? "mine" : "";
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = `${message.sender || "system"} · #${message.seq}`;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    item.append(from, text);
    list.append(item);
  }
  list.scrollTop = list.scrollHeight;
}

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
    $("room-error").textContent = error.message;
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
