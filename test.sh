#!/usr/bin/env bash
# Run the whole test suite against real Kafka (started by the project's launcher, or
# KAFKA_BOOTSTRAP_SERVERS) and real clients. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
.ci/install
exec python3 -m pytest "$@"
