// The other clients of the flood run (benchmarks/flood.py, issue 11): official socket.io-client
// receivers in one room and a publisher publishing into it through the gateway protocol,
// timing each event from its publish to each receiver; and a newcomer connecting once a
// second, to show that new clients from their address are still let in.
// argv[2]: the spec as JSON ({url, receivers, rate, room}).
// stdin: one command a line. stdout: one JSON report a line.
//
// Commands: {"cmd": "open"} (everyone connected and joined, then "opened"),
// {"cmd": "measure", "seconds": s} (publishes for s seconds, waits for every event to reach
// every receiver or 30 s, then "measured"), {"cmd": "close"} ("closed").

import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";

import { io } from "socket.io-client";

import { join, sleep } from "./clients.js";
import { summarize } from "./stats.js";

const spec = JSON.parse(process.argv[2]);
const report = (obj, then) => process.stdout.write(JSON.stringify(obj) + "\n", then);
const TICK_MS = 10;
const SETTLE_MS = 30000;

function open() {
  const socket = io(spec.url, { transports: ["websocket"], forceNew: true, reconnection: false });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("connect: timed out")), 10000);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once("connect_error", (err) => {
      clearTimeout(timer);
      socket.close();
      reject(new Error(`connect: ${err.message}`));
    });
  });
}

// A receiver: the latency (µs) of each event of the current phase, with the time it was
// sent (for the worst latency of each second), and whether it dropped.
class Receiver {
  constructor(socket) {
    this.socket = socket;
    this.phase = -1;
    this.latencies = [];
    this.sentAt = [];
    this.seqs = new Set();
    this.disconnects = 0;
    socket.on("disconnect", () => this.disconnects++);
    socket.on("ev", (data) => {
      if (data.phase !== this.phase) return;
      this.latencies.push((performance.now() - data.t) * 1000);
      this.sentAt.push(data.t);
      this.seqs.add(data.seq);
    });
  }
}

const receivers = [];
let publisher = null;
let phase = 0;

// One connection opened and closed each second while ``running()``.
async function newcomers(running) {
  const outcome = { ok: 0, refused: [] };
  while (running()) {
    try {
      (await open()).disconnect();
      outcome.ok++;
    } catch (err) {
      outcome.refused.push(err.message);
    }
    await sleep(1000);
  }
  return outcome;
}

async function measure(seconds) {
  phase++;
  for (const r of receivers) {
    r.phase = phase;
    r.latencies = [];
    r.sentAt = [];
    r.seqs = new Set();
    r.disconnects = 0;
  }
  const acks = { ok: 0, errors: {} };
  const ackUs = [];
  const pending = [];
  const started = performance.now();
  const end = started + seconds * 1000;
  const newcomer = newcomers(() => performance.now() < end);
  let sent = 0;
  while (performance.now() < end) {
    const owed = Math.floor(((performance.now() - started) / 1000) * spec.rate) + 1 - sent;
    for (let n = 0; n < owed; n++) {
      const t = performance.now();
      const data = { phase, seq: sent++, t };
      const ack = publisher
        .timeout(SETTLE_MS)
        .emitWithAck("publish", { room: spec.room, event: "ev", data })
        .then(
          (reply) => {
            if (reply.ok) {
              acks.ok++;
              ackUs.push((performance.now() - t) * 1000);
            } else acks.errors[reply.error] = (acks.errors[reply.error] ?? 0) + 1;
          },
          (err) => {
            acks.errors[err.message] = (acks.errors[err.message] ?? 0) + 1;
          },
        );
      pending.push(ack);
    }
    await sleep(TICK_MS);
  }
  const publishS = (performance.now() - started) / 1000;
  await Promise.all(pending);
  const settleEnd = performance.now() + SETTLE_MS;
  while (receivers.some((r) => r.seqs.size < acks.ok) && performance.now() < settleEnd) {
    await sleep(TICK_MS);
  }
  const all = receivers.flatMap((r) => r.latencies);
  // When in the phase the latency went: one stall decides a p99 of 20 s.
  const worst = new Array(Math.ceil(publishS)).fill(0);
  for (const r of receivers) {
    r.latencies.forEach((us, i) => {
      const second = Math.floor((r.sentAt[i] - started) / 1000);
      worst[second] = Math.max(worst[second] ?? 0, Math.round(us / 100) / 10);
    });
  }
  report({
    type: "measured",
    seconds: publishS,
    sent,
    acked: acks.ok,
    ack_errors: acks.errors,
    ack_ms: summarize(ackUs),
    delivered_min: Math.min(...receivers.map((r) => r.seqs.size)),
    expected_per_receiver: sent,
    receivers_connected: receivers.filter((r) => r.socket.connected).length,
    receiver_disconnects: receivers.reduce((sum, r) => sum + r.disconnects, 0),
    publisher_connected: publisher.connected,
    newcomers: await newcomer,
    latency_ms: { ...summarize(all), cdf: undefined },
    worst_ms_by_second: worst,
  });
}

const commands = {
  async open() {
    for (let n = 0; n < spec.receivers; n++) receivers.push(new Receiver(await open()));
    await Promise.all(receivers.map((r) => join(r.socket, spec.room, 10000)));
    publisher = await open();
    report({ type: "opened", receivers: receivers.length });
  },
  async measure({ seconds }) {
    await measure(seconds);
  },
  async close() {
    for (const r of receivers) r.socket.disconnect();
    publisher?.disconnect();
    report({ type: "closed" }, () => process.exit(0));
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const command = JSON.parse(line);
  try {
    await commands[command.cmd](command);
  } catch (err) {
    report({ type: "error", message: String(err?.stack ?? err) }, () => process.exit(1));
  }
}
