// The workloads of issue 4, each against a 3-node cluster at `spec.urls` (node 1, 2, 3).
// `out` reports progress and marks (the harness samples CPU at each mark).

import { ask, connect, connected, nowUs, waitUntil } from "./clients.js";
import { Publisher, pace } from "./publisher.js";
import { Receivers } from "./receivers.js";
import { summarize, tally, timeline } from "./stats.js";

const AS_FAST_AS_THE_WINDOW_ALLOWS = 1e9;
const WARM = -1; // an event every subject gets first, so a recovering client holds an offset
const MARKER = -2; // published last: once a client has it, it has everything before it

// Receivers in one room on nodes 2 and 3 (half each), one thread per node.
function receiversOnNodes2And3(spec, options) {
  const [, second, third] = spec.urls;
  const onSecond = Math.ceil(spec.receivers / 2);
  const groups = [Array(onSecond).fill(second), Array(spec.receivers - onSecond).fill(third)];
  return Receivers.open({ room: spec.room, event: "m", ...options, groups });
}

// Wait until every receiver has every event; how long that took (null: not within `seconds`).
async function drain(receivers, publisher, seconds) {
  const start = performance.now();
  try {
    await waitUntil(() => receivers.deliveredToAll() >= publisher.sent, seconds * 1000, "drain");
    return (performance.now() - start) / 1000;
  } catch {
    return null;
  }
}

export async function probe(spec) {
  const sockets = await Promise.all(spec.urls.map(connect));
  const heard = sockets.map(() => new Set());
  sockets.forEach((socket, i) => socket.on("probe", (data) => heard[i].add(data)));
  try {
    await Promise.all(sockets.map((socket) => ask(socket, "join", { room: spec.room })));
    const deadline = performance.now() + spec.timeout_s * 1000;
    for (let round = 0; ; round++) {
      const ids = sockets.map((_, i) => `${round}:${i}`);
      sockets.forEach((socket, i) => {
        socket.emit("publish", { room: spec.room, event: "probe", data: ids[i] });
      });
      const everyoneHeardEveryone = () =>
        heard.every((set, i) => ids.every((id, j) => i === j || set.has(id)));
      try {
        await waitUntil(everyoneHeardEveryone, 1000, "probe round");
        return { rounds: round + 1 };
      } catch (error) {
        if (performance.now() > deadline) throw error;
      }
    }
  } finally {
    for (const socket of sockets) socket.disconnect();
  }
}

export async function latency(spec, out) {
  const recordFromSeq = Math.round(spec.rate * spec.warmup_s);
  const receivers = await receiversOnNodes2And3(spec, { recordFromSeq });
  const publisher = await Publisher.open(spec.urls[0], spec.room);
  try {
    // Open loop at the fixed rate; only a hopeless backlog (2 s of events) holds it back.
    const limit = Math.max(100, spec.rate * 2);
    const total = Math.round(spec.rate * spec.duration_s);
    out.mark("start");
    const run = await pace({
      rate: spec.rate,
      seconds: spec.duration_s,
      send: () => publisher.send(),
      headroom: () => limit - (publisher.sent - receivers.deliveredToAll()),
      onTick: () => out.progress(publisher.sent, total),
    });
    const drainS = await drain(receivers, publisher, spec.drain_s);
    out.mark("end");
    const { seqs, latencies } = await receivers.report();
    return {
      rate: spec.rate,
      achieved_rate: run.sent / run.seconds,
      // Held back by the backlog, or a second or more behind when the sending stopped.
      overloaded: run.throttled || drainS === null || drainS > 1,
      sent: publisher.sent,
      receivers: receivers.size,
      expected: publisher.sent * receivers.size,
      delivered: receivers.delivered(),
      drain_s: drainS,
      publish_refused: publisher.refused,
      latency: summarize(latencies),
      timeline: timeline(seqs, latencies, spec.rate, recordFromSeq),
    };
  } finally {
    publisher.close();
    await receivers.close();
  }
}

export async function saturation(spec, out) {
  const receivers = await receiversOnNodes2And3(spec, { recordFromSeq: Infinity });
  const publisher = await Publisher.open(spec.urls[0], spec.room);
  const steps = [];
  try {
    let best = 0;
    for (const [index, rate] of spec.rates.entries()) {
      const [deliveredBefore, sentBefore] = [receivers.delivered(), publisher.sent];
      out.mark(`step-${index}-start`);
      const run = await pace({
        rate,
        seconds: spec.step_s,
        send: () => publisher.send(),
        headroom: () => spec.window - (publisher.sent - receivers.deliveredToAll()),
      });
      const deliveries = receivers.delivered() - deliveredBefore;
      out.mark(`step-${index}-end`);
      const perSecond = deliveries / run.seconds;
      steps.push({
        index,
        target_rate: rate,
        published: publisher.sent - sentBefore,
        deliveries,
        seconds: run.seconds,
        deliveries_per_s: perSecond,
        window_bound: run.throttled,
      });
      out.progress(index + 1, spec.rates.length);
      // The offered rate rose and deliveries did not follow: the plateau is reached.
      if (index >= 2 && perSecond < 1.1 * best) break;
      best = Math.max(best, perSecond);
    }
    const drainS = await drain(receivers, publisher, spec.drain_s);
    return {
      receivers: receivers.size,
      window: spec.window,
      steps,
      drain_s: drainS,
      sent: publisher.sent,
      delivered: receivers.delivered(),
      expected: publisher.sent * receivers.size,
      publish_refused: publisher.refused,
    };
  } finally {
    publisher.close();
    await receivers.close();
  }
}

export async function fanout(spec, out) {
  const urls = Array.from({ length: spec.sockets }, (_, i) => spec.urls[i % spec.urls.length]);
  const groups = Array.from({ length: spec.workers }, (_, w) =>
    urls.filter((_, i) => i % spec.workers === w),
  );
  let joined = 0;
  const receivers = await Receivers.open({
    groups,
    room: spec.room,
    event: "m",
    onJoined: () => out.progress(++joined, spec.sockets + spec.rounds),
  });
  const publisher = await Publisher.open(spec.urls[0], spec.room);
  try {
    out.mark("start");
    for (let round = 0; round < spec.rounds; round++) {
      publisher.send();
      const target = receivers.size * (round + 1);
      await waitUntil(
        () => receivers.delivered() >= target,
        spec.round_timeout_s * 1000,
        `round ${round}: ${receivers.delivered()} of ${target} deliveries`,
      );
      out.progress(spec.sockets + round + 1, spec.sockets + spec.rounds);
    }
    out.mark("end");
    const { seqs, latencies } = await receivers.report();
    const rounds = Array.from({ length: spec.rounds }, (_, round) => {
      const summary = summarize(latencies.filter((_, i) => seqs[i] === round));
      return { round, delivered: summary.count, p50_ms: summary.p50_ms, last_ms: summary.max_ms };
    });
    const lasts = rounds.map((round) => round.last_ms).sort((a, b) => a - b);
    return {
      sockets: receivers.size,
      nodes: spec.urls.length,
      rounds,
      time_to_last_ms: lasts[Math.floor(lasts.length / 2)],
      time_to_last_max_ms: lasts.at(-1),
    };
  } finally {
    publisher.close();
    await receivers.close();
  }
}

// A client on node 2 (`subject`) and one on node 3 (`witness`) in the publisher's room.
async function subjectAndWitness(spec) {
  const publisher = await Publisher.open(spec.urls[0], spec.room);
  const [subject, witness] = await Promise.all([connect(spec.urls[1]), connect(spec.urls[2])]);
  const got = { subject: [], witness: [] };
  subject.on("m", (data) => got.subject.push(data.seq));
  witness.on("m", (data) => got.witness.push(data.seq));
  await Promise.all([subject, witness].map((socket) => ask(socket, "join", { room: spec.room })));
  publisher.send(WARM);
  await waitUntil(
    () => got.subject.includes(WARM) && got.witness.includes(WARM),
    30_000,
    "the first event at both clients",
  );
  const close = () => {
    publisher.close();
    subject.disconnect();
    witness.disconnect();
  };
  return { publisher, subject, witness, got, close };
}

// Drop the transport, as a lost network would: the server sees "transport close" and keeps
// the session where it can recover one.
function dropTransport(socket) {
  socket.io.engine.close();
}

// Reconnect; a client whose session was not recovered joins its room again, as an app would.
async function comeBack(socket, room) {
  await connected(socket);
  const recovered = socket.recovered === true;
  if (!recovered) await ask(socket, "join", { room });
  return recovered;
}

// Publish the marker and wait until both clients have it: then nothing sent before it is
// still on its way to them.
async function barrier(publisher, got, seconds) {
  publisher.send(MARKER);
  const arrived = () => got.subject.includes(MARKER) && got.witness.includes(MARKER);
  await waitUntil(arrived, seconds * 1000, "the marker event at both clients");
}

export async function recovery(spec, out) {
  const clients = await subjectAndWitness(spec);
  const { publisher, subject, got } = clients;
  const missedAtWitness = () => got.witness.length - 1; // all but the warm event
  try {
    let lastAt = 0;
    subject.on("m", (data) => {
      if (data.seq === spec.missed - 1) lastAt = nowUs();
    });
    dropTransport(subject);
    await waitUntil(() => !subject.connected, 10_000, "the subject's disconnect");
    out.mark("away");
    let seq = 0;
    await pace({
      rate: AS_FAST_AS_THE_WINDOW_ALLOWS,
      seconds: Infinity,
      stallSeconds: spec.timeout_s,
      count: spec.missed,
      send: () => publisher.send(seq++),
      headroom: () => spec.window - (seq - missedAtWitness()),
      onTick: () => out.progress(missedAtWitness(), spec.missed),
    });
    await waitUntil(
      () => missedAtWitness() >= spec.missed,
      spec.timeout_s * 1000,
      "the witness to get every event",
    );
    out.mark("reconnect");
    const reconnectAt = nowUs();
    const recovered = await comeBack(subject, spec.room);
    if (recovered) await waitUntil(() => lastAt > 0, spec.timeout_s * 1000, "the last missed event");
    const recoveryMs = recovered ? (lastAt - reconnectAt) / 1000 : null;
    await barrier(publisher, got, spec.timeout_s);
    out.mark("end");
    return { missed: spec.missed, recovered, recovery_ms: recoveryMs, ...tally(got.subject, spec.missed) };
  } finally {
    clients.close();
  }
}

export async function disconnect(spec, out) {
  const clients = await subjectAndWitness(spec);
  const { publisher, subject, got } = clients;
  try {
    const seconds = spec.before_s + spec.gap_s + spec.after_s;
    let phase = "before";
    let returning = null;
    let seq = 0;
    out.mark("start");
    const run = await pace({
      rate: spec.rate,
      seconds,
      send: () => publisher.send(seq++),
      headroom: () => Infinity,
      onTick: (elapsed) => {
        out.progress(Math.floor(elapsed * 10), seconds * 10);
        if (phase === "before" && elapsed >= spec.before_s) {
          dropTransport(subject);
          phase = "away";
        } else if (phase === "away" && elapsed >= spec.before_s + spec.gap_s) {
          returning = comeBack(subject, spec.room);
          phase = "after";
        }
      },
    });
    const recovered = await returning;
    const sent = run.sent;
    await barrier(publisher, got, 30);
    out.mark("end");
    return {
      rate: spec.rate,
      gap_s: spec.gap_s,
      sent,
      recovered,
      ...tally(got.subject, sent),
      witness: tally(got.witness, sent),
    };
  } finally {
    clients.close();
  }
}
