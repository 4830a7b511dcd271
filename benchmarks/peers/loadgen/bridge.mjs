// The official-client side of the bridge benchmark (benchmarks/bridge.py, issue 12):
// socket.io-client sockets, each in one room, that note every event they receive and how
// long after its producer stamped it (data.t, epoch seconds) it arrived.
// argv[2]: the spec as JSON ({urls, rooms, atOnce, events}); socket n joins rooms[n] on
// urls[n % urls.length] and listens for each of events (each event's data: {seq, t}).
// stdin: one command a line. stdout: one JSON report a line.
//
// Commands: {"cmd": "open"} (every socket connects and joins its room, then an "opened"
// report), {"cmd": "await", "event": e, "total": n, "timeoutMs": t} (once n events e have
// arrived over all sockets, or at the timeout, an "arrived" report: the count and the
// epoch ms of the first and the last), {"cmd": "collect", "event": e, "latencies": bool}
// (a "collected" report: each socket's seqs of e in arrival order, and their latencies).

import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";

import { io } from "socket.io-client";

const spec = JSON.parse(process.argv[2]);
const report = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => performance.timeOrigin + performance.now();

const tallies = Object.fromEntries(spec.events.map((e) => [e, { count: 0, firstAt: null, lastAt: null }]));

class Receiver {
  constructor(room, url) {
    this.room = room;
    this.got = Object.fromEntries(spec.events.map((e) => [e, { seqs: [], latencies: [] }]));
    const options = { transports: ["websocket"], forceNew: true, autoConnect: false, reconnection: false };
    this.socket = io(url, options);
    for (const event of spec.events) {
      this.socket.on(event, (data) => {
        const at = now();
        const got = this.got[event];
        got.seqs.push(data.seq);
        got.latencies.push(Math.round((at - data.t * 1000) * 100) / 100);
        const tally = tallies[event];
        tally.count += 1;
        tally.firstAt ??= at;
        tally.lastAt = at;
      });
    }
  }

  connect() {
    return new Promise((resolve, reject) => {
      this.socket.once("connect", resolve);
      this.socket.once("connect_error", reject);
      this.socket.connect();
    });
  }

  async join() {
    const reply = await this.socket.timeout(60000).emitWithAck("join", { room: this.room });
    if (!reply.ok) throw new Error(`join ${this.room}: ${reply.error}`);
  }
}

const receivers = spec.rooms.map((room, n) => new Receiver(room, spec.urls[n % spec.urls.length]));

const commands = {
  async open() {
    for (let at = 0; at < receivers.length; at += spec.atOnce) {
      const wave = receivers.slice(at, at + spec.atOnce);
      await Promise.all(wave.map((r) => r.connect()));
      await Promise.all(wave.map((r) => r.join()));
    }
    report({ type: "opened", sids: receivers.map((r) => r.socket.id) });
  },
  async await({ event, total, timeoutMs }) {
    const deadline = Date.now() + timeoutMs;
    while (tallies[event].count < total && Date.now() < deadline) await sleep(5);
    report({ type: "arrived", event, ...tallies[event] });
  },
  async collect({ event, latencies }) {
    const clients = receivers.map((r) => ({
      room: r.room,
      seqs: r.got[event].seqs,
      latencies: latencies ? r.got[event].latencies : [],
      connected: r.socket.connected,
    }));
    report({ type: "collected", event, clients });
  },
};

createInterface({ input: process.stdin }).on("line", (line) => {
  const { cmd, ...args } = JSON.parse(line);
  Promise.resolve(commands[cmd](args)).catch((err) => report({ type: "error", cmd, message: String(err) }));
});
