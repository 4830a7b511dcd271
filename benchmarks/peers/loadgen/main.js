// The load generator: runs one workload against a 3-node cluster and reports on stdout, one
// JSON object a line: {"type": "progress"|"mark"|"result"|"error", ...}.
//
//   node loadgen/main.js '{"workload": "latency", "urls": [...], "room": "r", ...}'

import process from "node:process";

import { nowUs } from "./clients.js";
import * as workloads from "./workloads.js";

function line(object) {
  process.stdout.write(`${JSON.stringify(object)}\n`);
}

const out = {
  progress(done, total) {
    const now = performance.now();
    if (now - (this.lastProgress ?? 0) < 200 && done < total) return; // a few lines a second
    this.lastProgress = now;
    line({ type: "progress", done, total });
  },
  mark(name) {
    line({ type: "mark", name, t_us: nowUs() });
  },
};

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const run = workloads[spec.workload];
  if (typeof run !== "function") throw new Error(`no workload ${spec.workload}`);
  line({ type: "result", result: await run(spec, out) });
}

process.on("SIGTERM", () => process.exit(143));

main().then(
  () => process.exit(0),
  (error) => {
    line({ type: "error", message: error.message, stack: error.stack });
    process.exit(1);
  },
);
