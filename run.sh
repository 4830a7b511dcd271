#!/usr/bin/env bash
# Start a local Apache Kafka and three gateway nodes, and show clients talking across
# them; the nodes serve until Ctrl-C. Extra arguments go to 'socketio-kafka demo'.
set -euo pipefail
cd "$(dirname "$0")"
.ci/install
exec socketio-kafka demo "$@"
