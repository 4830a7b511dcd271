// The demo page: a chat room on the gateway's own protocol (join, publish; README,
// "Its client protocol"), with the official socket.io client doing connection state
// recovery. Parameters: ?nodes=url1,url2,... (default: this page's node), ?room=lobby,
// ?name=..., and a token as #token=... (or ?token=...) when the nodes check JWTs.
"use strict";

const query = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const nodes = (query.get("nodes") || location.origin)
  .split(",").map((url) => url.trim().replace(/\/+$/, "")).filter(Boolean);
const room = query.get("room") || "lobby";
const token = fragment.get("token") || query.get("token");
const name = query.get("name") || subjectOf(token) || `visitor-${Math.random().toString(36).slice(2, 6)}`;

const $ = (id) => document.getElementById(id);
$("room").textContent = room;

// A recovered connection's CONNECT reply comes before its replay, and the page sends a
// join at once: the messages that arrive before the join's reply are what it recovered
// (a replay of more than one of the server's batches, 500 events, may outlast that round
// trip; this page's count is a demo's).
let recovering = false;
let recoveredCount = 0;
let current = 0;

if (typeof io === "undefined") {
  showError("the socket.io client did not load: run the project's install step (npm ci --prefix gateway/static)");
} else {
  start();
}

function start() {
  const socket = io(nodes[current], {
    transports: ["websocket"],
    auth: token ? { token } : undefined,
    reconnectionDelay: 500,
    reconnectionDelayMax: 2000,
  });

  // Each attempt goes to the next node; the Socket keeps its pid and last offset, so the
  // session is recovered on whichever node answers.
  socket.io.on("reconnect_attempt", (attempt) => {
    current = (current + 1) % nodes.length;
    socket.io.uri = nodes[current];
    setState("reconnecting", `reconnecting to ${nodes[current]} (attempt ${attempt})`);
  });

  socket.on("connect", async () => {
    setState("connected", "connected");
    showError("");
    showNode(nodes[current]);
    const badge = $("recovered");
    badge.hidden = true;
    recovering = socket.recovered;
    // A fresh session's rooms are not kept, so it joins again; a recovered one is in the
    // room already, and the reply comes after its replay.
    const reply = await socket.emitWithAck("join", { room });
    recovering = false;
    if (!reply.ok) return showError(`join ${room}: ${reply.error}`);
    badge.hidden = !socket.recovered;
    badge.textContent = `recovered: ${recoveredCount} missed message${recoveredCount === 1 ? "" : "s"}`;
    $("room").dataset.joined = "true";
  });

  socket.on("disconnect", (reason) => {
    recovering = false;
    recoveredCount = 0;
    delete $("room").dataset.joined;
    setState("disconnected", `disconnected (${reason})`);
  });

  socket.on("connect_error", (err) => {
    if (socket.active) {
      setState("reconnecting", `cannot reach ${nodes[current]}: ${err.message}`);
    } else {  // refused by the server (a bad token): the client does not retry
      setState("refused", "refused");
      showError(err.message);
    }
  });

  socket.on("chat", (message) => {
    const recovered = recovering;
    if (recovered) recoveredCount += 1;
    addMessage(message, { recovered });
  });

  $("send").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("text").value;
    $("text").value = "";
    const data = { from: name, text };
    const reply = await socket.emitWithAck("publish", { room, event: "chat", data });
    if (reply.ok) addMessage(data, { mine: true });  // the sender is not sent its own
    else showError(`publish: ${reply.error}`);
  });
}

function addMessage(message, { recovered = false, mine = false }) {
  const item = document.createElement("li");
  item.className = [recovered && "recovered", mine && "mine"].filter(Boolean).join(" ");
  item.dataset.recovered = String(recovered);
  const from = document.createElement("span");
  from.className = "from";
  const isChat = message !== null && typeof message === "object";
  from.textContent = isChat ? String(message.from ?? "?") : "?";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = isChat ? String(message.text ?? JSON.stringify(message)) : JSON.stringify(message);
  item.append(from, text);
  $("messages").append(item);
}

async function showNode(url) {
  $("node").textContent = url;
  try {
    const response = await fetch(`${url}/node`);
    const { node } = await response.json();
    if (nodes[current] === url) $("node").textContent = `${node} (${url})`;
  } catch {
    // An older node without /node: its URL says enough.
  }
}

function setState(state, text) {
  $("state").dataset.state = state;
  $("state").textContent = text;
}

function showError(text) {
  $("error").hidden = !text;
  $("error").textContent = text;
}

function subjectOf(jwt) {
  // For display only: the node verifies the token, the page just reads its subject.
  try {
    const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub;
  } catch {
    return null;
  }
}
