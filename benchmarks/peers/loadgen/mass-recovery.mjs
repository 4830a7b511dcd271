// The official-client side of the mass recovery (benchmarks/mass_recovery.py, issue 10):
// socket.io-client sockets, each in a room of its own, that lose their node and reconnect
// to the survivors when told to, all at once.
// argv[2]: the spec as JSON ({url, rooms, atOnce, connectTimeoutMs}); socket n joins rooms[n].
// stdin: one command a line. stdout: one JSON report a line.
//
// Commands: {"cmd": "open"} (every socket connects to url and joins its room, then an
// "opened" report with each one's sid), {"cmd": "drops", "timeoutMs": t} (waits until none
// is connected: "dropped"), {"cmd": "reconnect", "clients": [n...], "urls": [url...],
// "own": k, "timeoutMs": t} (those sockets connect again at once, alternately to each url;
// once each has k distinct "own" events, or at the timeout, a "reconnected" report with
// what each received and when, in ms from the command).

import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";

import { io } from "socket.io-client";

import { eventually, join } from "./clients.js";

const spec = JSON.parse(process.argv[2]);
const report = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

// Reconnections are ours to start (on command): none happens before it.
class Client {
  constructor(room) {
    Object.assign(this, { room, own: [], others: 0, retries: 0, startedAt: 0 });
    this.socket = io(spec.url, {
      transports: ["websocket"],
      forceNew: true,
      autoConnect: false,
      reconnection: false,
      timeout: spec.connectTimeoutMs,
    });
    this.socket.on("own", (data) => {
      this.own.push(data.seq);
      if (this.doneMs === undefined && new Set(this.own).size >= this.expected) {
        this.doneMs = performance.now() - this.startedAt;
      }
    });
    this.socket.on("other", () => (this.others += 1));
  }

  // The first connection: a refused attempt is tried again, as with reconnection on.
  connect() {
    return new Promise((resolve) => {
      const retry = () => {
        this.retries += 1;
        setTimeout(() => this.socket.connect(), 300);
      };
      this.socket.on("connect_error", retry);
      this.socket.once("connect", () => {
        this.socket.off("connect_error", retry);
        resolve();
      });
      this.socket.connect();
    });
  }

  async join() {
    await join(this.socket, this.room, 60000);
  }

  // With reconnection on from here, as a real client has it: an attempt the node closes
  // (a claim it could not confirm in time) is retried after the client's default delay.
  async recover(url, own) {
    Object.assign(this, { own: [], others: 0, retries: 0, expected: own, doneMs: undefined });
    this.startedAt = performance.now();
    this.socket.io.uri = url;
    this.url = url;
    this.socket.io.reconnection(true);
    this.socket.io.on("reconnect_attempt", () => (this.retries += 1));
    await new Promise((resolve) => {
      // Timed in the event, not after the await: the events that came in the same read
      // as the CONNECT reply (a replay's first) are handled before any promise goes on.
      this.socket.once("connect", () => {
        this.connectMs = performance.now() - this.startedAt;
        resolve();
      });
      this.socket.connect();
    });
  }

  result() {
    const { room, url, own, others, retries, doneMs, connectMs } = this;
    return { room, url, own, others, retries, doneMs, connectMs, recovered: this.socket.recovered === true };
  }
}

const clients = spec.rooms.map((room) => new Client(room));

const commands = {
  async open() {
    for (let at = 0; at < clients.length; at += spec.atOnce) {
      const wave = clients.slice(at, at + spec.atOnce);
      await Promise.all(wave.map((c) => c.connect()));
      await Promise.all(wave.map((c) => c.join()));
    }
    report({ type: "opened", sids: clients.map((c) => c.socket.id) });
  },
  async drops({ timeoutMs }) {
    await eventually(() => clients.every((c) => !c.socket.connected), timeoutMs, 20);
    report({ type: "dropped", connected: clients.filter((c) => c.socket.connected).length });
  },
  async reconnect({ clients: chosen, urls, own, timeoutMs }) {
    const picked = chosen.map((n) => clients[n]);
    picked.forEach((c, k) => c.recover(urls[k % urls.length], own));
    await eventually(() => picked.every((c) => c.doneMs !== undefined), timeoutMs, 20);
    report({ type: "reconnected", clients: picked.map((c) => c.result()) });
  },
};

createInterface({ input: process.stdin }).on("line", (line) => {
  const { cmd, ...args } = JSON.parse(line);
  Promise.resolve(commands[cmd](args)).catch((err) => report({ type: "error", cmd, message: String(err) }));
});
