// wsgate try-it page: one WebSocket session speaking wsgate.v1 (see docs/protocol.md).
// Plain browser JavaScript, no build step, no dependencies.
"use strict";

(() => {
  // Reconnect contract (docs/protocol.md): reconnect after these codes only, waiting
  // random(0, min(cap, base * 2^attempt)) ms; attempt resets once a session is welcomed.
  const RECONNECT_CODES = new Set([1001, 1006, 1011, 3001, 3008]);
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
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
    1011: "internal error: the session could not be registered",
    3001: "heartbeat timeout",
    3003: "kicked by a Disconnect call",
    3005: "token expired (get a new token, then reconnect)",
    3008: "slow consumer",
  };

  function closeMeaning(code) {
    if (CLOSE_CODES[code]) return CLOSE_CODES[code];
    if (code >= 4000 && code <= 4999) return "application-defined (chosen by a Disconnect caller)";
    if (code >= 3000 && code <= 3999) return "wsgate-specific code";
    return "unknown code";
  }

  const $ = (id) => document.getElementById(id);
  const meta = (name) => {
    const el = document.querySelector(`meta[name="${name}"]`);
    return el ? el.content : "";
  };

  const wsPath = meta("wsgate-ws-path") || "/ws";
  const authMode = meta("wsgate-auth");

  let ws = null;          // the current socket, if any
  let attempt = 0;        // reconnect attempt, reset on welcome
  let retryTimer = null;  // pending reconnect
  let wanted = [];        // topics to (re)subscribe after each welcome
  const subs = new Map(); // topic -> "pending" | "subscribed" | "error"
  const pings = new Map(); // ping id -> performance.now() when sent
  let pingSeq = 0;
  let pushCount = 0;

  // --- helpers -------------------------------------------------------------

  function endpoint(query) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const q = query && query.toString();
    return `${scheme}//${location.host}${wsPath}${q ? "?" + q : ""}`;
  }

  function credentials() {
    const q = new URLSearchParams();
    const token = $("token").value.trim();
    const user = $("user").value.trim();
    if (token) q.set("access_token", token);
    else if (user) q.set("user", user);
    return q;
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

  function hex(buffer) {
    const bytes = new Uint8Array(buffer);
    const shown = Array.from(bytes.subarray(0, HEX_PREVIEW_BYTES), (b) => pad(b.toString(16)));
    return shown.join(" ") + (bytes.length > HEX_PREVIEW_BYTES ? " …" : "");
  }

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  // --- rendering -----------------------------------------------------------

  // Every value from the network goes through textContent, never innerHTML.
  function addEntry({ kind, tag, topic, text, pre }) {
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
  }

  function system(text, kind = "system", tag = "info") {
    addEntry({ kind, tag, text });
  }

  function setState(state, text) {
    const el = $("state");
    el.dataset.state = state;
    $("state-text").textContent = text;
    const open = state === "open";
    $("disconnect").disabled = !(ws || retryTimer);
    $("ping").disabled = !open;
    $("apply-topics").disabled = !open;
  }

  function renderSubs() {
    const dd = $("subscriptions");
    dd.replaceChildren();
    const subscribed = [];
    for (const [topic, status] of subs) {
      const chip = document.createElement("span");
      chip.className = `topic-chip ${status}`;
      chip.textContent = topic;
      chip.title = status;
      dd.append(chip);
      if (status === "subscribed") subscribed.push(topic);
    }
    if (!subs.size) dd.textContent = "–";
    dd.dataset.subscribed = subscribed.join(",");
  }

  function resetSession() {
    $("session-id").textContent = "–";
    $("user-id").textContent = "–";
    $("heartbeat").textContent = "–";
    subs.clear();
    pings.clear();
    renderSubs();
  }

  // --- the connection ------------------------------------------------------

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    const query = credentials();
    if (!query.toString()) {
      system(authMode === "jwt" ? "Enter a token first." : "Enter a user name (or a token) first.", "error", "error");
      return;
    }
    if (ws) {
      const old = ws;
      ws = null;
      old.close(1000, "reconnecting");
    }
    wanted = parseTopics($("topics").value);
    resetSession();
    let socket;
    try {
      socket = new WebSocket(endpoint(query), "wsgate.v1");
    } catch (e) {
      system(`Cannot open the WebSocket: ${e.message}`, "error", "error");
      setState("closed", "not connected");
      return;
    }
    socket.binaryType = "arraybuffer";
    ws = socket;
    setState("connecting", attempt ? `connecting (attempt ${attempt + 1})…` : "connecting…");

    socket.onopen = () => {
      if (ws !== socket) return;
      setState("connecting", "connected, waiting for welcome…");
      system(`WebSocket open (subprotocol ${socket.protocol || "none"})`);
    };
    socket.onmessage = (event) => {
      if (ws === socket) onFrame(event.data);
    };
    socket.onclose = (event) => {
      if (ws !== socket) return;
      ws = null;
      onClose(event);
    };
    // An error is always followed by a close event, which carries the code.
    socket.onerror = () => {};
  }

  function disconnect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (ws) {
      const socket = ws;
      ws = null;
      socket.close(1000, "closed by the user");
      showClose(1000, "closed by the user", false);
    }
    resetSession();
    attempt = 0;
    setState("closed", "disconnected");
  }

  function showClose(code, reason, reconnecting, delayMs) {
    const meaning = closeMeaning(code);
    const info = $("close-info");
    info.textContent = `${code} · ${meaning}${reason ? ` · “${reason}”` : ""}`;
    info.dataset.code = String(code);
    info.className = code === 1000 ? "" : reconnecting ? "warn" : "bad";
    const next = reconnecting
      ? `reconnecting in ${(delayMs / 1000).toFixed(1)} s`
      : "not reconnecting";
    addEntry({
      kind: "close",
      tag: `closed ${code}`,
      text: `${meaning}${reason ? ` · reason: “${reason}”` : ""} · ${next}`,
    });
  }

  function onClose(event) {
    const code = event.code;
    resetSession();
    if (RECONNECT_CODES.has(code)) {
      const delay = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
      attempt += 1;
      retryTimer = setTimeout(connect, delay);
      showClose(code, event.reason, true, delay);
      setState("reconnecting", `closed ${code}, reconnecting in ${(delay / 1000).toFixed(1)} s`);
    } else {
      attempt = 0;
      showClose(code, event.reason, false);
      setState("closed", `closed ${code} · ${closeMeaning(code).split(":")[0]}`);
    }
  }

  function onFrame(data) {
    if (data instanceof ArrayBuffer) {
      pushed();
      addEntry({ kind: "binary", tag: "binary", text: `${data.byteLength} bytes`, pre: hex(data) || "(empty)" });
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      addEntry({ kind: "error", tag: "not JSON", pre: data });
      return;
    }
    switch (msg.op) {
      case "welcome":
        attempt = 0;
        $("session-id").textContent = msg.session_id;
        $("user-id").textContent = msg.user_id;
        $("heartbeat").textContent = `${msg.heartbeat_s} s (pings answered by the browser)`;
        setState("open", `connected as ${msg.user_id}`);
        system(`Welcome: session ${msg.session_id}, user ${msg.user_id}`);
        for (const topic of wanted) subscribe(topic);
        break;
      case "subscribed":
        subs.set(msg.topic, "subscribed");
        renderSubs();
        system(`Subscribed to ${msg.topic}`);
        break;
      case "unsubscribed":
        subs.delete(msg.topic);
        renderSubs();
        system(`Unsubscribed from ${msg.topic}`);
        break;
      case "pong": {
        const sent = pings.get(msg.id);
        pings.delete(msg.id);
        const rtt = sent === undefined ? "" : ` · ${Math.round(performance.now() - sent)} ms round trip`;
        system(`Pong${rtt}`);
        break;
      }
      case "message":
        pushed();
        addEntry({
          kind: "push",
          tag: "message",
          topic: msg.topic,
          ...(typeof msg.data === "string"
            ? { text: msg.data }
            : { pre: JSON.stringify(msg.data, null, 2) }),
        });
        break;
      case "error": {
        const id = typeof msg.id === "string" ? msg.id : "";
        if (id.startsWith("sub:")) {
          subs.set(id.slice(4), "error");
          renderSubs();
        }
        addEntry({ kind: "error", tag: `error ${msg.code}`, text: msg.message || "" });
        break;
      }
      default:
        addEntry({ kind: "system", tag: msg.op || "frame", pre: JSON.stringify(msg, null, 2) });
    }
  }

  function pushed() {
    pushCount += 1;
    $("count").textContent = String(pushCount);
  }

  function subscribe(topic) {
    if (send({ op: "subscribe", topic, id: `sub:${topic}` })) {
      subs.set(topic, "pending");
      renderSubs();
    }
  }

  function applyTopics() {
    wanted = parseTopics($("topics").value);
    for (const topic of wanted) if (!subs.has(topic) || subs.get(topic) === "error") subscribe(topic);
    for (const topic of [...subs.keys()]) {
      if (!wanted.includes(topic)) send({ op: "unsubscribe", topic, id: `unsub:${topic}` });
    }
  }

  function ping() {
    pingSeq += 1;
    const id = `ping-${pingSeq}`;
    pings.set(id, performance.now());
    send({ op: "ping", id });
  }

  // --- start ---------------------------------------------------------------

  function init() {
    if (authMode === "jwt") $("user-field").hidden = true;
    if (authMode === "none") $("token-field").hidden = true;
    $("endpoint").textContent = endpoint();

    const params = new URLSearchParams(location.search);
    $("token").value = params.get("token") || params.get("access_token") || "";
    $("user").value = params.get("user") || "";
    $("topics").value = params.get("subscribe") || params.get("topics") || "";
    if ($("token").value) $("token-field").hidden = false;
    if ($("user").value) $("user-field").hidden = false;

    $("connect-form").addEventListener("submit", (e) => {
      e.preventDefault();
      attempt = 0;
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

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
