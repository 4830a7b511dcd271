// The official-client side of the chaos harness (benchmarks/chaos, issue 9): socket.io-client
// receivers in rooms, and pipelined publishers that number their events per room.
// argv[2]: the spec as JSON. stdin: one command a line. stdout: one JSON report a line.
//
// Commands: {"cmd": "start"} (publishers begin), {"cmd": "nodes", "up": [url...]} (where a
// reconnection may go: a load balancer's view), {"cmd": "drop", "n": k} (k receivers lose
// their transport), {"cmd": "drop", "publishers": true}, {"cmd": "stop"} (publishing ends,
// the acks are awaited, then a "stopped" report with what was acked),
// {"cmd": "settle", "last": {room: {p: s}}, "timeoutMs": t} (waits until each receiver
// has its room's last acked events, then the "result" report with what each received).

import { createInterface } from "node:readline";

import { io } from "socket.io-client";

import { connectedWithin, eventually, join } from "./clients.js";

const spec = JSON.parse(process.argv[2]);
const report = (obj, then) =>
  process.stdout.write(JSON.stringify({ t: Date.now() / 1000, ...obj }) + "\n", then);

// Round-robin over the nodes up: where a reconnection goes.
const balancer = {
  up: [...spec.urls],
  turn: 0,
  pick() {
    this.turn += 1;
    return this.up[this.turn % this.up.length];
  },
};

// A pinned socket reconnects to its own node only (a sticky load balancer's client).
function open(url, pinned = false) {
  const socket = io(url, {
    transports: ["websocket"],
    forceNew: true,
    reconnectionDelay: 300,
    reconnectionDelayMax: 1000,
  });
  if (!pinned) {
    socket.io.on("reconnect_attempt", () => {
      socket.io.uri = balancer.pick();
    });
  }
  return socket;
}

// A member of one room: per publisher, the numbers it received, in arrival order.
class Receiver {
  constructor(index, url, room) {
    Object.assign(this, { index, url, room, got: {}, seen: {}, reconnects: [], drops: 0 });
    this.socket = open(url);
    this.socket.on("m", (data) => {
      (this.got[data.p] ??= []).push(data.s);
      (this.seen[data.p] ??= new Set()).add(data.s);
    });
  }

  async start() {
    await connectedWithin(this.socket, 30000);
    await join(this.socket, this.room);
    this.socket.on("connect", () => this.reconnected());
  }

  // A session that was not recovered left the room: join again, and count it.
  async reconnected() {
    const recovered = this.socket.recovered;
    this.reconnects.push({ t: Date.now() / 1000, recovered, url: this.socket.io.uri });
    if (!recovered) await join(this.socket, this.room).catch(() => {});
  }

  drop() {
    this.drops += 1;
    this.socket.io.engine.close();
  }

  has(last) {
    return Object.entries(last).every(([p, s]) => this.seen[p]?.has(s));
  }
}

// Numbered events to every room, each room at `rate`, never waiting for an ack before the
// next (pipelined). Each publish is acked ok, refused (an error reply), or timed out.
class Publisher {
  constructor(index, url, pinned) {
    Object.assign(this, { index, url, pinned, next: {}, acked: {}, refused: {}, errors: {} });
    this.pending = 0;
    this.perSecond = {}; // second sent -> [sent, ok, refused]
    this.reconnects = [];
    this.socket = open(url, pinned);
    this.socket.on("connect", () => this.reconnects.push({ t: Date.now() / 1000, url: this.socket.io.uri }));
  }

  emit(room) {
    const s = (this.next[room] = (this.next[room] ?? 0) + 1);
    const bucket = (this.perSecond[Math.floor(Date.now() / 1000)] ??= [0, 0, 0]);
    bucket[0] += 1;
    this.pending += 1;
    const payload = { room, event: "m", data: { p: this.index, s } };
    this.socket.timeout(spec.ackTimeoutMs).emit("publish", payload, (err, reply) => {
      this.pending -= 1;
      if (!err && reply.ok) {
        (this.acked[room] ??= []).push(s);
        bucket[1] += 1;
        return;
      }
      (this.refused[room] ??= []).push(s);
      bucket[2] += 1;
      const kind = (err ? String(err.message) : reply.error).replace(/\d+(\.\d+)?/g, "N").slice(0, 160);
      this.errors[kind] = (this.errors[kind] ?? 0) + 1;
    });
  }

  // Caught up every 10 ms against the clock.
  run(rooms, rate) {
    const start = Date.now();
    let sent = 0;
    this.timer = setInterval(() => {
      const due = Math.floor(((Date.now() - start) / 1000) * rate);
      for (; sent < due; sent++) rooms.forEach((room) => this.emit(room));
    }, 10);
  }

  summary() {
    return {
      index: this.index,
      url: this.url,
      pinned: this.pinned,
      sent: this.next,
      acked: this.acked,
      refused: this.refused,
      errors: this.errors,
      pending: this.pending,
      perSecond: this.perSecond,
      reconnects: this.reconnects,
    };
  }
}

async function main() {
  const receivers = spec.receivers.map(({ room, node }, i) => new Receiver(i, spec.urls[node], room));
  await Promise.all(receivers.map((r) => r.start()));
  const publishers = spec.publishers.map(({ node, pinned }, i) => new Publisher(i, spec.urls[node], pinned));
  await Promise.all(publishers.map((p) => connectedWithin(p.socket, 30000)));
  report({ type: "ready" });

  let dropped = 0;
  const commands = {
    start() {
      publishers.forEach((p) => p.run(spec.rooms, spec.rate));
      report({ type: "started" });
    },
    // Each publisher's last number so far (the same in every room): where a stretch ends.
    mark() {
      const next = Object.fromEntries(publishers.map((p) => [p.index, Math.max(0, ...Object.values(p.next))]));
      report({ type: "mark", next });
    },
    // How many sockets are not connected, and where the receivers are.
    status() {
      const sockets = [...receivers, ...publishers].map((c) => c.socket);
      const where = {};
      for (const r of receivers) if (r.socket.connected) where[r.socket.io.uri] = (where[r.socket.io.uri] ?? 0) + 1;
      report({ type: "status", disconnected: sockets.filter((s) => !s.connected).length, where });
    },
    nodes({ up }) {
      balancer.up = up;
      report({ type: "nodes" });
    },
    // Different receivers each time, spread over the list.
    drop({ n = 0, publishers: alsoPublishers = false }) {
      const picked = [];
      for (let k = 0; k < n && receivers.length; k++) picked.push(receivers[dropped++ % receivers.length]);
      picked.forEach((r) => r.drop());
      if (alsoPublishers) publishers.forEach((p) => p.socket.io.engine.close());
      report({ type: "dropped", clients: picked.map((r) => r.index) });
    },
    async stop() {
      publishers.forEach((p) => clearInterval(p.timer));
      await eventually(() => publishers.every((p) => p.pending === 0), spec.ackTimeoutMs + 5000);
      report({ type: "stopped", publishers: publishers.map((p) => p.summary()) });
    },
    async settle({ last, timeoutMs }) {
      const settled = await eventually(() => receivers.every((r) => r.has(last[r.room] ?? {})), timeoutMs);
      const result = receivers.map((r) => ({
        client: `js-${r.index}`,
        room: r.room,
        url: r.url,
        got: r.got,
        reconnects: r.reconnects,
        drops: r.drops,
      }));
      // A pipe takes 64 KiB at once: exit once it is all written.
      report({ type: "result", settled, receivers: result }, () => process.exit(0));
    },
  };
  createInterface({ input: process.stdin }).on("line", (line) => {
    const { cmd, ...args } = JSON.parse(line);
    Promise.resolve(commands[cmd](args)).catch((err) => report({ type: "error", cmd, message: String(err) }));
  });
}

main().catch((err) => {
  report({ type: "error", message: String(err && err.stack) });
  process.exit(1);
});
