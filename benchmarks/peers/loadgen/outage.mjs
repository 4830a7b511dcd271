// The client side of the broker-outage run (benchmarks/outage.py, issue 8): official
// socket.io-client receivers in two rooms, one publisher that never waits for its acks,
// and one prober per node that says when that node publishes again.
// argv[2]: the spec as JSON. stdin: one command a line ({"cmd": "drop"|"finish"}).
// stdout: one JSON report a line; the last one is {"type": "result", ...}.

import { createInterface } from "node:readline";

import { io } from "socket.io-client";

import { connectedWithin, eventually, join } from "./clients.js";

const spec = JSON.parse(process.argv[2]);
const report = (obj, then) =>
  process.stdout.write(JSON.stringify({ t: Date.now() / 1000, ...obj }) + "\n", then);

// Reconnection on (the official client's own, with connection state recovery), and quick.
function open(url) {
  return io(url, {
    transports: ["websocket"],
    reconnectionDelay: 300,
    reconnectionDelayMax: 1000,
  });
}

// A member of one room: what it received, in order, and how each reconnection went.
class Receiver {
  constructor(index, url, room) {
    Object.assign(this, { index, url, room, seqs: [], got: new Set(), reconnects: [], drops: 0 });
    this.socket = open(url);
    this.socket.on("m", (data) => {
      this.seqs.push(data.s);
      this.got.add(data.s);
    });
  }

  async start() {
    await connectedWithin(this.socket, 20000);
    await join(this.socket, this.room);
    this.socket.on("connect", () => this.reconnected());
  }

  // A session that was not recovered left the room: join again, and count it.
  async reconnected() {
    const recovered = this.socket.recovered;
    this.reconnects.push({ t: Date.now() / 1000, recovered, dropped: this.drops > 0 });
    if (!recovered) await join(this.socket, this.room).catch(() => {});
  }

  drop() {
    this.drops += 1;
    this.socket.io.engine.close();
  }
}

// Paced emits with acks awaited up to ackTimeoutMs, never one before the next.
class Publisher {
  constructor(url) {
    this.socket = open(url);
    this.next = {};
    this.okSeqs = {};
    this.perSecond = {}; // second since start -> {ok, error, timeout}
    this.pending = 0;
    this.errors = {};
  }

  emit(room) {
    const s = (this.next[room] = (this.next[room] ?? 0) + 1);
    const second = Math.floor(Date.now() / 1000);
    const bucket = (this.perSecond[second] ??= { sent: 0, ok: 0, error: 0, timeout: 0 });
    bucket.sent += 1;
    this.pending += 1;
    this.socket.timeout(spec.ackTimeoutMs).emit("publish", { room, event: "m", data: { s } }, (err, reply) => {
      this.pending -= 1;
      if (err) bucket.timeout += 1;
      else if (reply.ok) (this.okSeqs[room] ??= []).push(s) && (bucket.ok += 1);
      else {
        bucket.error += 1;
        const kind = reply.error.replace(/\d+(\.\d+)?/g, "N").slice(0, 160);
        this.errors[kind] = (this.errors[kind] ?? 0) + 1;
      }
    });
  }

  // Each room at its own rate, caught up every 10 ms against the clock.
  run(rates) {
    const start = Date.now();
    const sent = Object.fromEntries(Object.keys(rates).map((room) => [room, 0]));
    this.timer = setInterval(() => {
      const elapsed = (Date.now() - start) / 1000;
      for (const [room, rate] of Object.entries(rates)) {
        while (sent[room] < Math.floor(elapsed * rate)) {
          sent[room] += 1;
          this.emit(room);
        }
      }
    }, 10);
  }
}

// One publish every 100 ms through one node, each ack awaited up to 2 s: when it first
// answers ok after the broker's return is when that node publishes again.
class Prober {
  constructor(url) {
    this.socket = open(url);
    this.oks = []; // [sent, acked] of each ok
    this.refusals = []; // [sent, error]
  }

  run() {
    this.timer = setInterval(() => {
      const sent = Date.now() / 1000;
      this.socket.timeout(2000).emit("publish", { room: "probe", event: "p", data: {} }, (err, reply) => {
        if (!err && reply.ok) this.oks.push([sent, Date.now() / 1000]);
        else this.refusals.push([sent, err ? "ack timeout" : reply.error]);
      });
    }, 100);
  }
}

// Every acked publish must reach each member of its room once, in order.
function check(receiver, okSeqs) {
  const acked = new Set(okSeqs);
  const counts = new Map();
  for (const s of receiver.seqs) counts.set(s, (counts.get(s) ?? 0) + 1);
  let lost = 0;
  let duplicated = 0;
  for (const s of acked) {
    const n = counts.get(s) ?? 0;
    if (n === 0) lost += 1;
    if (n > 1) duplicated += n - 1;
  }
  const inAcked = receiver.seqs.filter((s) => acked.has(s));
  const outOfOrder = [];
  for (let i = 1; i < inAcked.length; i++) {
    if (inAcked[i] <= inAcked[i - 1]) outOfOrder.push([inAcked[i - 1], inAcked[i]]);
  }
  return {
    lost,
    duplicated,
    outOfOrder: outOfOrder.length,
    outOfOrderPairs: outOfOrder.slice(0, 5), // [received before, received after]
    received: receiver.seqs.length,
  };
}

async function main() {
  const { urls } = spec;
  const receivers = [];
  for (let i = 0; i < spec.clientsA + spec.clientsB; i++) {
    const room = i < spec.clientsA ? "A" : "B";
    receivers.push(new Receiver(i, urls[i % urls.length], room));
  }
  await Promise.all(receivers.map((r) => r.start()));
  const publisher = new Publisher(urls[0]);
  const probers = urls.map((url) => new Prober(url));
  const sockets = [publisher.socket, ...probers.map((p) => p.socket)];
  await Promise.all(sockets.map((socket) => connectedWithin(socket, 20000)));
  publisher.run({ A: spec.rateA, B: spec.rateB });
  probers.forEach((p) => p.run());
  report({ type: "ready" });

  let dropRound = 0;
  const commands = {
    // One client per node, different ones each round.
    drop() {
      const picked = urls.map((_, n) => receivers[dropRound * urls.length + n]);
      dropRound += 1;
      picked.forEach((r) => r.drop());
      report({ type: "dropped", clients: picked.map((r) => r.index) });
    },
    async finish() {
      clearInterval(publisher.timer);
      probers.forEach((p) => clearInterval(p.timer));
      await eventually(() => publisher.pending === 0, spec.ackTimeoutMs + 5000);
      // Delivery after the last ack: wait until every member has all it should, or give up.
      const complete = () =>
        receivers.every((r) => (publisher.okSeqs[r.room] ?? []).every((s) => r.got.has(s)));
      const settled = await eventually(complete, 15000);
      const members = receivers.map((r) => ({
        index: r.index,
        url: r.url,
        room: r.room,
        ...check(r, publisher.okSeqs[r.room] ?? []),
        reconnects: r.reconnects,
      }));
      report({
        type: "result",
        settled,
        pendingAcks: publisher.pending,
        acked: Object.fromEntries(Object.entries(publisher.okSeqs).map(([k, v]) => [k, v.length])),
        sent: publisher.next,
        perSecond: publisher.perSecond,
        errors: publisher.errors,
        members,
        probes: probers.map((p, n) => ({ url: urls[n], oks: p.oks, refusals: p.refusals })),
      }, () => process.exit(0)); // a pipe takes 64 KiB at once: exit once it is all written
    },
  };
  createInterface({ input: process.stdin }).on("line", (line) => {
    const { cmd } = JSON.parse(line);
    Promise.resolve(commands[cmd]()).catch((err) => report({ type: "error", cmd, message: String(err) }));
  });
}

main().catch((err) => {
  report({ type: "error", message: String(err && err.stack) });
  process.exit(1);
});
