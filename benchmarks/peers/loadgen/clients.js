// Official socket.io-client sockets, one clock, and waiting on conditions with deadlines.

import process from "node:process";
import { setTimeout as sleep } from "node:timers/promises";

import { io } from "socket.io-client";

export { sleep };

// CLOCK_MONOTONIC in microseconds: one clock for every process and thread on the machine,
// so a receiver in another process can subtract a publisher's timestamp.
export function nowUs() {
  const [seconds, nanoseconds] = process.hrtime();
  return seconds * 1e6 + nanoseconds / 1e3;
}

// WebSocket only (no polling upgrade), no compression, no automatic reconnection: every
// reconnection a workload makes is its own, at a time it chooses.
export function socketTo(url) {
  return io(url, {
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    perMessageDeflate: false,
    timeout: 30_000,
    autoConnect: false,
  });
}

export function connected(socket) {
  return new Promise((resolve, reject) => {
    if (socket.connected) {
      resolve(socket);
      return;
    }
    const onConnect = () => {
      socket.off("connect_error", onError);
      resolve(socket);
    };
    const onError = (error) => {
      socket.off("connect", onConnect);
      reject(new Error(`cannot connect to ${socket.io.uri}: ${error.message}`));
    };
    socket.once("connect", onConnect);
    socket.once("connect_error", onError);
    socket.connect();
  });
}

export async function connect(url) {
  return connected(socketTo(url));
}

export async function ask(socket, event, payload, timeoutMs = 30_000) {
  const reply = await socket.timeout(timeoutMs).emitWithAck(event, payload);
  if (!reply?.ok) throw new Error(`${event} refused: ${JSON.stringify(reply)}`);
  return reply;
}

// Whether `condition` holds within `timeoutMs`, polled every `pollMs`: for a caller that
// reports a miss instead of failing on it.
export async function eventually(condition, timeoutMs, pollMs = 50) {
  const deadline = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadline) await sleep(pollMs);
  return condition();
}

// Resolves when `socket`, which connects by itself, is connected; rejects after `timeoutMs`.
export function connectedWithin(socket, timeoutMs) {
  return new Promise((resolve, reject) => {
    const fail = () => reject(new Error(`no connection to ${socket.io.uri}`));
    const timer = setTimeout(fail, timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer); // a script that is done exits at once, not at the deadline
      resolve();
    });
  });
}

// Join `room` (the gateway's and the Node peers' protocol); throws the server's refusal.
export async function join(socket, room, timeoutMs = 20_000) {
  const reply = await socket.timeout(timeoutMs).emitWithAck("join", { room });
  if (!reply.ok) throw new Error(`join ${room}: ${reply.error}`);
}

export async function waitUntil(predicate, timeoutMs, what) {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await sleep(1);
  }
}

// Run `task` over `items` with at most `limit` at a time; `onDone` after each.
export async function inBatches(items, limit, task, onDone = () => {}) {
  let next = 0;
  async function lane() {
    while (next < items.length) {
      const index = next++;
      await task(items[index], index);
      onDone();
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}
