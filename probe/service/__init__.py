"""The live service: capture on interfaces, workers, signals, metrics, systemd."""
