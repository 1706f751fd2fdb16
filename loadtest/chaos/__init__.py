"""The chaos checker (issue 10): the resume guarantee under a seeded fault schedule.

``python -m loadtest.chaos --broker memory|redis|nats|kafka --seconds N --seed S --report-dir DIR``
starts a real broker, its nodes, a publisher and a population of WebSocket and
SSE clients written from docs/protocol.md, injects faults, and checks every
client's stream against the acknowledged publications (see checker.py).
"""
