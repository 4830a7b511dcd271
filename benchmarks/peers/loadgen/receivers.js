// Receiving sockets spread over worker threads, so receiving runs in parallel with publishing.

import { Worker } from "node:worker_threads";

const WORKER = new URL("./receiver-worker.js", import.meta.url);

export class Receivers {
  // `groups`: one list of node URLs per worker thread, one socket per URL.
  static async open({ groups, room, event, recordFromSeq = 0, onJoined = () => {} }) {
    const total = groups.reduce((sum, urls) => sum + urls.length, 0);
    const counters = new SharedArrayBuffer(4 * total);
    const receivers = new Receivers(new Int32Array(counters));
    let firstSlot = 0;
    const ready = [];
    for (const urls of groups) {
      const worker = new Worker(WORKER, {
        workerData: { urls, room, event, counters, firstSlot, recordFromSeq, connectConcurrency: 25 },
      });
      firstSlot += urls.length;
      receivers.workers.push(worker);
      ready.push(
        new Promise((resolve, reject) => {
          worker.on("message", (message) => {
            if (message.type === "joined") onJoined();
            else if (message.type === "ready") resolve();
            else if (message.type === "error") reject(new Error(message.message));
          });
          worker.once("error", reject);
        }),
      );
    }
    try {
      await Promise.all(ready);
    } catch (error) {
      await receivers.close();
      throw error;
    }
    return receivers;
  }

  constructor(counts) {
    this.counts = counts;
    this.workers = [];
  }

  get size() {
    return this.counts.length;
  }

  // Events delivered, summed over every socket.
  delivered() {
    let sum = 0;
    for (let i = 0; i < this.counts.length; i++) sum += Atomics.load(this.counts, i);
    return sum;
  }

  // Events delivered to every socket (the publisher's window is bounded by this).
  deliveredToAll() {
    let least = Infinity;
    for (let i = 0; i < this.counts.length; i++) least = Math.min(least, Atomics.load(this.counts, i));
    return least;
  }

  // Every recorded (seq, latency in µs) since the last report, from every worker.
  async report() {
    const parts = await Promise.all(
      this.workers.map(
        (worker) =>
          new Promise((resolve) => {
            const onMessage = (message) => {
              if (message.type !== "report") return;
              worker.off("message", onMessage);
              resolve(message);
            };
            worker.on("message", onMessage);
            worker.postMessage("report");
          }),
      ),
    );
    return {
      seqs: parts.flatMap((part) => Array.from(part.seqs)),
      latencies: concat(parts.map((part) => part.latencies)),
    };
  }

  async close() {
    await Promise.all(
      this.workers.map(
        (worker) =>
          new Promise((resolve) => {
            worker.once("exit", resolve);
            worker.postMessage("close");
          }),
      ),
    );
  }
}

function concat(arrays) {
  const out = new Float64Array(arrays.reduce((sum, array) => sum + array.length, 0));
  let at = 0;
  for (const array of arrays) {
    out.set(array, at);
    at += array.length;
  }
  return out;
}
