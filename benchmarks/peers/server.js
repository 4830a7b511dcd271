// A Node socket.io node speaking the gateway's protocol (join / leave / publish, each acked),
// on @socket.io/redis-adapter or @socket.io/redis-streams-adapter (with connection state
// recovery): the peers the benchmarks compare our gateway with.
//
//   PORT=8001 REDIS_URL=redis://127.0.0.1:6379/0 ADAPTER=redis CHANNEL=bench node server.js
//
// GET /readyz answers 200 once the node's Redis clients are connected.

import http from "node:http";
import process from "node:process";

import { createAdapter as createPubSubAdapter } from "@socket.io/redis-adapter";
import { createAdapter as createStreamsAdapter } from "@socket.io/redis-streams-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

const MAX_NAME_LENGTH = 256;
const RESERVED_EVENTS = new Set([
  "connect",
  "connect_error",
  "disconnect",
  "disconnecting",
  "newListener",
  "removeListener",
]);
// A recovering client may be away this long; the stream keeps this many entries (the
// adapter's default of 10,000 would trim what the recovery workload sends).
const RECOVERY_WINDOW_MS = 120_000;
const STREAM_MAX_LEN = 2_000_000;

const { PORT, REDIS_URL, ADAPTER, CHANNEL } = process.env;
if (!PORT || !REDIS_URL || !["redis", "redis-streams"].includes(ADAPTER) || !CHANNEL) {
  console.error("usage: PORT=.. REDIS_URL=.. ADAPTER=redis|redis-streams CHANNEL=.. node server.js");
  process.exit(2);
}

let ready = false;
const httpServer = http.createServer((req, res) => {
  const status = req.url === "/healthz" ? 200 : req.url === "/readyz" && ready ? 200 : 503;
  res.writeHead(req.url === "/healthz" || req.url === "/readyz" ? status : 404, {
    "content-type": "application/json",
  });
  res.end(JSON.stringify({ ready }));
});

const io = new Server(httpServer, {
  cors: { origin: "*" },
  maxHttpBufferSize: 1_000_000,
  perMessageDeflate: false, // socket.io's default, stated: the benchmarks compare without it
  ...(ADAPTER === "redis-streams"
    ? { connectionStateRecovery: { maxDisconnectionDuration: RECOVERY_WINDOW_MS } }
    : {}),
});

function payloadOf(args) {
  if (args.length !== 1 || typeof args[0] !== "object" || args[0] === null || Array.isArray(args[0])) {
    throw new Error("expected one JSON object as the payload");
  }
  return args[0];
}

function nameOf(payload, field) {
  const value = payload[field];
  if (typeof value !== "string" || value.length === 0) {
    throw new Error(`'${field}' must be a non-empty string`);
  }
  if (value.length > MAX_NAME_LENGTH) {
    throw new Error(`'${field}' longer than ${MAX_NAME_LENGTH} characters`);
  }
  return value;
}

const actions = {
  join(socket, payload) {
    socket.join(nameOf(payload, "room"));
  },
  leave(socket, payload) {
    socket.leave(nameOf(payload, "room"));
  },
  publish(socket, payload) {
    const room = nameOf(payload, "room");
    const event = nameOf(payload, "event");
    if (RESERVED_EVENTS.has(event)) throw new Error(`event name '${event}' is reserved`);
    if (!("data" in payload)) throw new Error("'data' is required");
    // Handed to the adapter, which publishes it to Redis: what our gateway's ack also means.
    socket.to(room).emit(event, payload.data);
  },
};

io.on("connection", (socket) => {
  for (const [name, action] of Object.entries(actions)) {
    socket.on(name, (...args) => {
      const ack = typeof args.at(-1) === "function" ? args.pop() : undefined;
      let reply = { ok: true };
      try {
        action(socket, payloadOf(args));
      } catch (error) {
        reply = { ok: false, error: error.message };
      }
      ack?.(reply);
    });
  }
});

async function start() {
  const pub = createClient({ url: REDIS_URL });
  pub.on("error", (error) => console.error("redis:", error.message));
  await pub.connect();
  if (ADAPTER === "redis") {
    const sub = pub.duplicate();
    sub.on("error", (error) => console.error("redis:", error.message));
    await sub.connect();
    io.adapter(createPubSubAdapter(pub, sub, { key: CHANNEL }));
  } else {
    io.adapter(createStreamsAdapter(pub, { streamName: CHANNEL, maxLen: STREAM_MAX_LEN }));
  }
  ready = true;
}

httpServer.listen(Number(PORT), "127.0.0.1", () => {
  start().catch((error) => {
    console.error("cannot start:", error);
    process.exit(1);
  });
});

function shutdown() {
  io.close(() => process.exit(0));
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
