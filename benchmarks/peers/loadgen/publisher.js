// The publishing socket and its pacing: a fixed rate, bounded by a window of events not yet
// delivered everywhere (never by publish acks: an ack only says the broker has the event).

import { connect, nowUs, sleep } from "./clients.js";

const TEXT = "x".repeat(64); // a chat-sized payload: {"seq":..,"t":..,"text":"xx..."}

export class Publisher {
  static async open(url, room, event = "m") {
    return new Publisher(await connect(url), room, event);
  }

  constructor(socket, room, event) {
    this.socket = socket;
    this.room = room;
    this.event = event;
    this.sent = 0;
    this.acked = 0;
    this.refused = 0;
  }

  // Publish event `seq` (by default the next one) stamped with the send time.
  send(seq = this.sent) {
    const data = { seq, t: nowUs(), text: TEXT };
    this.socket.emit("publish", { room: this.room, event: this.event, data }, (reply) => {
      if (reply?.ok) this.acked++;
      else this.refused++;
    });
    this.sent++;
  }

  close() {
    this.socket.disconnect();
  }
}

// Call `send()` `rate` times a second for `seconds` (at most `count` times), never while
// `headroom()` is not positive; `onTick(elapsedSeconds)` after each 1 ms tick. Throws when
// events were due and `headroom()` let none go for `stallSeconds` (a receiver that lost its
// connection would otherwise hold the run forever).
export async function pace({
  rate,
  seconds,
  count = Infinity,
  send,
  headroom,
  onTick = () => {},
  stallSeconds = Infinity,
}) {
  const start = performance.now();
  let sent = 0;
  let throttled = false;
  let movedAt = start;
  for (;;) {
    const now = performance.now();
    const elapsed = (now - start) / 1000;
    if (elapsed >= seconds || sent >= count) break;
    const due = Math.min(count, Math.floor(elapsed * rate) + 1) - sent;
    const allowed = Math.min(due, headroom());
    if (allowed < due) throttled = true;
    if (due <= 0 || allowed > 0) movedAt = now;
    else if (now - movedAt > stallSeconds * 1000) {
      throw new Error(`no headroom for ${stallSeconds} s after ${sent} events: a receiver stalled`);
    }
    for (let i = 0; i < allowed; i++, sent++) send();
    onTick(elapsed);
    await sleep(1);
  }
  return { sent, seconds: (performance.now() - start) / 1000, throttled };
}
