// wsgate try-it page: a browser session on the gateway's own WebSocket.
//
// The protocol (docs/protocol.md) is spoken by the official client, @wsgate/client, served
// next to this file as /demo/wsgate-client.js (a committed copy of clients/js/dist/index.js,
// refreshed with `npm run embed` in clients/js). The client connects, reconnects with
// backoff, subscribes again and recovers every stream with history from its last offset;
// this page only shows what it does. No build step for the page itself.
import { Client } from "./wsgate-client.js";

const MAX_ENTRIES = 500;
const HEX_PREVIEW_BYTES = 256;

const CLOSE_CODES = {
  1000: "normal closure",
  1001: "going away: the server is shutting down or draining",
  1002: "protocol error: the client broke the framing rules",
  1005: "no status code in the close frame",
  1006: "abnormal closure: the connection dropped or the handshake was refused (see the network tab)",
  1007: "invalid data: a text frame was not valid UTF-8",
  1008: "policy violation",
  1009: "message too big",
  1011: "internal error: the session could not be set up",
  3001: "heartbeat timeout",
  3003: "kicked by a Disconnect call",
  3005: "token expired (get a new token, then reconnect)",
  3008: "slow consumer",
  3010: "insufficient state: the user stream lost its continuity (reconnect with since)",
};

function closeMeaning(code) {
  if (CLOSE_CODES[code]) return CLOSE_CODES[code];
  if (code >= 4000 && code <= 4999) return "application-defined (chosen by a Disconnect caller)";
  if (code >= 3000 && code <= 3999) return "wsgate-specific code";
  return "unknown code";
}

/** The page's `#state[data-state]` for each state of the client. */
const PAGE_STATE = { connecting: "connecting", connected: "open", disconnected: "reconnecting", closed: "closed" };

const $ = (id) => document.getElementById(id);
const meta = (name) => {
  const el = document.querySelector(`meta[name="${name}"]`);
  return el ? el.content : "";
};

const wsPath = meta("wsgate-ws-path") || "/ws";
const authMode = meta("wsgate-auth");

let client = null; // the current Client; events of an older one are ignored
const subs = new Map(); // topic -> { sub, live, failed }
let attempts = 0; // connection attempts since the last welcome
let pushCount = 0;

// --- helpers ---------------------------------------------------------------

function endpoint(query) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const q = query && query.toString();
  return `${scheme}//${location.host}${wsPath}${q ? "?" + q : ""}`;
}

function parseTopics(text) {
  return [...new Set(text.split(",").map((t) => t.trim()).filter(Boolean))];
}

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

function clock(d = new Date()) {
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function hex(bytes) {
  const shown = Array.from(bytes.subarray(0, HEX_PREVIEW_BYTES), (b) => pad(b.toString(16)));
  return shown.join(" ") + (bytes.length > HEX_PREVIEW_BYTES ? " …" : "");
}

function position(p) {
  return p ? `offset ${p.offset} (epoch ${p.epoch})` : "";
}

// --- rendering -------------------------------------------------------------

// Every value from the network goes through textContent, never innerHTML.
function addEntry({ kind, tag, topic, offset, text, pre }) {
  const li = document.createElement("li");
  li.className = kind;
  const time = document.createElement("time");
  time.textContent = clock();
  const body = document.createElement("div");
  const head = document.createElement("div");
  head.className = "meta";
  const tagEl = document.createElement("span");
  tagEl.className = `tag ${kind}`;
  tagEl.textContent = tag;
  head.append(tagEl);
  if (topic !== undefined) {
    const topicEl = document.createElement("span");
    topicEl.className = "topic";
    topicEl.textContent = topic;
    head.append(topicEl);
  }
  if (offset !== undefined) {
    const offsetEl = document.createElement("span");
    offsetEl.className = "offset";
    offsetEl.title = "offset in the stream";
    offsetEl.textContent = `#${offset}`;
    head.append(offsetEl);
    li.dataset.offset = String(offset);
  }
  body.append(head);
  if (pre !== undefined) {
    const p = document.createElement("pre");
    p.textContent = pre;
    body.append(p);
  }
  if (text !== undefined) {
    const t = document.createElement("div");
    t.className = "text";
    t.textContent = text;
    body.append(t);
  }
  li.append(time, body);
  const log = $("log");
  log.prepend(li);
  while (log.childElementCount > MAX_ENTRIES) log.lastElementChild.remove();
  $("empty").hidden = true;
  return li;
}

function system(text, topic) {
  addEntry({ kind: "system", tag: "info", topic, text });
}

function failure(e, topic, what = "") {
  addEntry({ kind: "error", tag: `error ${e.code || "?"}`, topic, text: `${what}${e.message || ""}` });
}

function setState(state, text) {
  $("state").dataset.state = state;
  $("state-text").textContent = text;
  const active = !!client && client.state !== "closed";
  $("disconnect").disabled = !active;
  $("apply-topics").disabled = !active;
  $("ping").disabled = state !== "open";
}

function renderSubs() {
  const dd = $("subscriptions");
  dd.replaceChildren();
  const subscribed = [];
  for (const [topic, { sub, live, failed }] of subs) {
    const status = failed ? "error" : live ? "subscribed" : "pending";
    const chip = document.createElement("span");
    chip.className = `topic-chip ${status}`;
    chip.textContent = topic;
    const at = position(sub.position);
    chip.title = at ? `${status} · ${at}` : status;
    dd.append(chip);
    if (status === "subscribed") subscribed.push(topic);
  }
  if (!subs.size) dd.textContent = "–";
  dd.dataset.subscribed = subscribed.join(",");
}

function renderUserStream() {
  $("user-stream").textContent = (client && position(client.position)) || "–";
}

function resetSession() {
  $("session-id").textContent = "–";
  $("user-id").textContent = "–";
  $("heartbeat").textContent = "–";
  for (const entry of subs.values()) entry.live = false;
  renderSubs();
}

function showClose({ code, reason, reconnect, delayMs }) {
  const meaning = closeMeaning(code);
  const info = $("close-info");
  info.textContent = `${code} · ${meaning}${reason ? ` · “${reason}”` : ""}`;
  info.dataset.code = String(code);
  info.className = code === 1000 ? "" : reconnect ? "warn" : "bad";
  const next = reconnect ? `reconnecting in ${(delayMs / 1000).toFixed(1)} s` : "not reconnecting";
  addEntry({
    kind: "close",
    tag: `closed ${code}`,
    text: `${meaning}${reason ? ` · reason: “${reason}”` : ""} · ${next}`,
  });
}

function showPush({ data, offset, topic }) {
  pushCount += 1;
  $("count").textContent = String(pushCount);
  const entry = { kind: "push", tag: "message", topic, offset };
  if (data instanceof Uint8Array) {
    Object.assign(entry, { kind: "binary", tag: "binary", text: `${data.byteLength} bytes` });
    entry.pre = hex(data) || "(empty)";
  } else if (typeof data === "string") {
    entry.text = data;
  } else {
    entry.pre = JSON.stringify(data, null, 2);
  }
  addEntry(entry);
  if (topic === undefined) renderUserStream();
}

/** The outcome of a resubscribe (topic) or reconnect (user stream) with the last position. */
function showRecovery(ok, topic, p) {
  const stream = topic === undefined ? "user stream" : "topic";
  const li = addEntry({
    kind: "recovery",
    tag: ok ? "recovered" : "not recovered",
    topic,
    text: ok
      ? `The ${stream} recovered: what was missed after offset ${p.offset} follows, then live pushes`
      : `The ${stream} could not be recovered (its history was lost or trimmed): ` +
        `reload its state from your backend; carrying on from ${position(p)}`,
  });
  li.dataset.recovered = String(ok);
}

// --- the client --------------------------------------------------------------

function connect() {
  const token = $("token").value.trim();
  const user = $("user").value.trim();
  // With the connect proxy the browser's cookies authenticate: nothing to enter.
  if (!token && !user && authMode !== "proxy") {
    addEntry({
      kind: "error",
      tag: "error",
      text: authMode === "jwt" ? "Enter a token first." : "Enter a user name (or a token) first.",
    });
    return;
  }
  const old = client;
  client = null;
  old?.close();
  subs.clear();
  resetSession();

  const query = new URLSearchParams();
  if (!token && user) query.set("user", user);
  const c = new Client(endpoint(query), token ? { token } : {});
  client = c;
  attempts = 0;
  renderUserStream();
  // Only the current client may change the page.
  const mine = (f) => (v) => client === c && f(v);
  c.on("state", mine(onState));
  c.on("connected", mine(onConnected));
  c.on("disconnected", mine(onDisconnected));
  c.on("message", mine(showPush));
  c.on("recovered", mine((ok) => showRecovery(ok, undefined, c.position)));
  c.on("error", mine((e) => failure(e)));
  for (const topic of parseTopics($("topics").value)) subscribe(topic);
  c.connect();
}

function onState(state) {
  let text = state;
  if (state === "connecting") {
    attempts += 1;
    text = attempts > 1 ? `connecting (attempt ${attempts})…` : "connecting…";
  }
  if (state !== "connected") resetSession();
  setState(PAGE_STATE[state], text);
}

function onConnected({ sessionId, userId, heartbeatS }) {
  attempts = 0;
  $("session-id").textContent = sessionId;
  $("user-id").textContent = userId;
  $("heartbeat").textContent = `${heartbeatS} s (pings answered by the browser)`;
  setState("open", `connected as ${userId}`);
  system(`Welcome: session ${sessionId}, user ${userId}`);
  // The client takes the welcome's user stream position right after this event.
  queueMicrotask(renderUserStream);
}

function onDisconnected(info) {
  showClose(info);
  const { code, reconnect, delayMs } = info;
  if (reconnect) {
    setState("reconnecting", `closed ${code}, reconnecting in ${(delayMs / 1000).toFixed(1)} s`);
  } else {
    setState("closed", code === 1000 ? "disconnected" : `closed ${code} · ${closeMeaning(code).split(":")[0]}`);
  }
}

function subscribe(topic) {
  const sub = client.subscribe(topic);
  const entry = { sub, live: false, failed: false };
  subs.set(topic, entry);
  const mine = (f) => (v) => subs.get(topic) === entry && f(v);
  sub.on("state", mine((state) => {
    if (state !== "subscribed") entry.live = false;
    renderSubs();
  }));
  sub.on("subscribed", mine(({ epoch, offset }) => {
    entry.live = true;
    renderSubs();
    const at = epoch === undefined ? " (no history)" : ` · newest offset ${offset} (epoch ${epoch})`;
    system(`Subscribed to ${topic}${at}`, topic);
  }));
  sub.on("recovered", mine((ok) => showRecovery(ok, topic, sub.position)));
  sub.on("message", mine((m) => (showPush(m), renderSubs())));
  sub.on("error", mine((e) => failure(e, topic)));
  // Only the gateway ends a subscription that is still in the map (see applyTopics).
  sub.on("unsubscribed", mine(({ reason }) => {
    entry.failed = true;
    renderSubs();
    system(`The subscription to ${topic} ended: ${reason}`, topic);
  }));
  renderSubs();
}

function applyTopics() {
  if (!client) return;
  const wanted = parseTopics($("topics").value);
  for (const topic of wanted) if (!subs.has(topic) || subs.get(topic).failed) subscribe(topic);
  for (const [topic, { sub }] of [...subs]) {
    if (wanted.includes(topic)) continue;
    subs.delete(topic);
    sub.unsubscribe();
    system(`Unsubscribed from ${topic}`, topic);
  }
  renderSubs();
}

async function ping() {
  if (!client) return;
  try {
    const ms = await client.ping();
    system(`Pong · ${ms.toFixed(1)} ms round trip`);
  } catch (e) {
    failure(e, undefined, "ping: ");
  }
}

function disconnect() {
  client?.close();
}

// --- start -----------------------------------------------------------------

function init() {
  if (authMode === "jwt") $("user-field").hidden = true;
  if (authMode === "none") $("token-field").hidden = true;
  if (authMode === "proxy") {
    $("user-field").hidden = true;
    $("token-field").hidden = true;
  }
  $("endpoint").textContent = endpoint();

  const params = new URLSearchParams(location.search);
  $("token").value = params.get("token") || params.get("access_token") || "";
  $("user").value = params.get("user") || "";
  $("topics").value = params.get("subscribe") || params.get("topics") || "";
  if ($("token").value) $("token-field").hidden = false;
  if ($("user").value) $("user-field").hidden = false;

  $("connect-form").addEventListener("submit", (e) => {
    e.preventDefault();
    connect();
  });
  $("disconnect").addEventListener("click", disconnect);
  $("apply-topics").addEventListener("click", applyTopics);
  $("ping").addEventListener("click", ping);
  $("clear").addEventListener("click", () => {
    $("log").replaceChildren();
    pushCount = 0;
    $("count").textContent = "0";
    $("empty").hidden = false;
  });

  setState("idle", "not connected");
  if ($("token").value || $("user").value) connect();
}

init();
