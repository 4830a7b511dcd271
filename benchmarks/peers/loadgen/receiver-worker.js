// A worker thread holding receiving sockets: each joins the room, counts what it gets in a
// shared counter (the publisher's window reads them) and keeps each event's latency.

import { parentPort, workerData } from "node:worker_threads";

import { ask, connect, inBatches, nowUs } from "./clients.js";

const { urls, room, event, counters, firstSlot, recordFromSeq, connectConcurrency } = workerData;
const counts = new Int32Array(counters);
const sockets = [];
let seqs = [];
let latencies = [];

function onEvent(slot) {
  return (data) => {
    const latency = nowUs() - data.t;
    Atomics.add(counts, slot, 1);
    if (data.seq >= recordFromSeq) {
      seqs.push(data.seq);
      latencies.push(latency);
    }
  };
}

async function open(url, index) {
  const socket = await connect(url);
  socket.on(event, onEvent(firstSlot + index));
  await ask(socket, "join", { room });
  sockets[index] = socket;
}

parentPort.on("message", (command) => {
  if (command === "report") {
    const report = { seqs: Int32Array.from(seqs), latencies: Float64Array.from(latencies) };
    seqs = [];
    latencies = [];
    parentPort.postMessage({ type: "report", ...report }, [
      report.seqs.buffer,
      report.latencies.buffer,
    ]);
  } else if (command === "close") {
    for (const socket of sockets) socket?.disconnect();
    parentPort.close();
  }
});

try {
  await inBatches(urls, connectConcurrency, open, () => parentPort.postMessage({ type: "joined" }));
  parentPort.postMessage({ type: "ready" });
} catch (error) {
  parentPort.postMessage({ type: "error", message: error.message });
}
