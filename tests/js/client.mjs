// The official socket.io client, driven line by line by the Python tests.
// stdin: one JSON command per line; stdout: one JSON report per line.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

let socket = null;
const report = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const commands = {
  connect({
    url,
    auth,
    reconnectionDelay = 5000,
    reconnection = true,
    retries,
    ackTimeout,
    transports = ["websocket"],
  }) {
    socket = io(url, {
      transports,
      auth,
      reconnection,
      reconnectionDelay,
      reconnectionDelayMax: reconnectionDelay,
      randomizationFactor: 0,
      ...(retries === undefined ? {} : { retries, ackTimeout }),
    });
    socket.on("connect", () =>
      report({ type: "connect", id: socket.id, recovered: socket.recovered }),
    );
    socket.on("disconnect", (reason) => report({ type: "disconnect", reason }));
    socket.on("connect_error", (err) => report({ type: "connect_error", message: err.message }));
    socket.onAny((event, ...args) => report({ type: "event", event, args }));
  },
  // The same connection's socket of another namespace, its events reported with it (the
  // manager connects it itself: a second connect() sent a second CONNECT).
  namespace({ nsp }) {
    const other = socket.io.socket(nsp);
    other.on("connect", () => report({ type: "namespace", nsp, id: other.id }));
    other.onAny((event, ...args) => report({ type: "event", nsp, event, args }));
  },
  async call({ id, event, data }) {
    const reply = await socket.timeout(15000).emitWithAck(event, data);
    report({ type: "reply", id, reply });
  },
  // The client's own retries (connect's `retries`): resent until acked, across reconnections.
  async emitRetried({ id, event, data }) {
    const reply = await socket.emitWithAck(event, data);
    report({ type: "reply", id, reply });
  },
  // A lost transport, not a goodbye; the client reconnects by itself, to `url` if given
  // (what a load balancer does when the node the client was on is gone).
  drop({ url }) {
    if (url) socket.io.uri = url;
    socket.io.engine.close();
  },
  // Where the next reconnection goes (what a load balancer decides).
  retarget({ url }) {
    socket.io.uri = url;
  },
  // With reconnection off: reconnect now (the same Socket object, so the same pid/offset).
  reconnect() {
    socket.connect();
  },
  close() {
    socket?.disconnect();
    process.exit(0);
  },
};

createInterface({ input: process.stdin }).on("line", async (line) => {
  const { cmd, ...args } = JSON.parse(line);
  try {
    await commands[cmd](args);
  } catch (err) {
    report({ type: "error", cmd, message: String(err) });
  }
});
process.stdin.on("end", () => process.exit(0));
