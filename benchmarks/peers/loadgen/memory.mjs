// The client side of the memory run (benchmarks/memory.py, issue 10): many idle official
// socket.io-client connections to one node, WebSocket transport, each its own Manager.
// argv[2]: the spec as JSON ({url, connections, atOnce, sharedRooms, prefix}); rooms are
// named `${prefix}own-n` and `${prefix}shared-n` (prefix: "" unless given).
// stdin: one command a line. stdout: one JSON report a line.
//
// Commands: {"cmd": "open"} (every connection opened, then an "opened" report),
// {"cmd": "join"} (each joins its own room and one of sharedRooms, then "joined"),
// {"cmd": "count"} (how many are connected now: "counted"), {"cmd": "close"} ("closed").

import { createInterface } from "node:readline";

import { io } from "socket.io-client";

import { join } from "./clients.js";

const spec = JSON.parse(process.argv[2]);
const report = (obj, then) => process.stdout.write(JSON.stringify(obj) + "\n", then);
const sockets = [];
const prefix = spec.prefix ?? "";

function open() {
  // A minute to connect (the client's default is 20 s): a loaded node is slow, not wrong.
  const socket = io(spec.url, {
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    timeout: 60000,
  });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(new Error(`connect: ${err.message}`)));
  });
}

// In waves of atOnce: a node accepts a burst, not thousands of handshakes in one turn.
async function inWaves(count, work) {
  for (let at = 0; at < count; at += spec.atOnce) {
    const wave = [];
    for (let n = at; n < Math.min(count, at + spec.atOnce); n++) wave.push(work(n));
    await Promise.all(wave);
  }
}

const commands = {
  async open() {
    await inWaves(spec.connections, async () => sockets.push(await open()));
    report({ type: "opened", connected: sockets.filter((s) => s.connected).length });
  },
  async join() {
    await inWaves(sockets.length, async (n) => {
      await join(sockets[n], `${prefix}own-${n}`, 60000);
      await join(sockets[n], `${prefix}shared-${n % spec.sharedRooms}`, 60000);
    });
    report({ type: "joined", rooms: 2 });
  },
  async count() {
    report({ type: "counted", connected: sockets.filter((s) => s.connected).length });
  },
  async close() {
    for (const socket of sockets) socket.disconnect();
    report({ type: "closed" }, () => process.exit(0));
  },
};

for await (const line of createInterface({ input: process.stdin })) {
  const { cmd } = JSON.parse(line);
  try {
    await commands[cmd]();
  } catch (err) {
    report({ type: "error", message: String(err?.stack ?? err) }, () => process.exit(1));
  }
}
