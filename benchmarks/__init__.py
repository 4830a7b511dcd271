"""The comparison of issue 4: our Kafka adapter against python-socketio's Redis manager and
the Node socket.io peers, the same workloads on each, in one run on one machine.

``python -m benchmarks [--quick] [--out DIR]``; see ``benchmarks/RESULTS.md``.
"""
