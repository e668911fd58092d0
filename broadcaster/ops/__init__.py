"""Operator tooling: the CLI, `broadcaster up`, the demo, the process supervisor, Flower."""
