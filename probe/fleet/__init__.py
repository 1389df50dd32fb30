"""The fleet: many probes, one collector, over a NATS JetStream bus (`bus.py`). Probes publish
their notifications (the `nats` sink), fetch marker bundles and report heartbeats (`agent.py`);
`probe collect` stores and forwards the fleet's events (`collector.py`)."""
