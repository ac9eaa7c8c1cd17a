"""PyNet chat: a line-based TCP chat service, the workload PyNet deploys."""

__version__ = "0.1.0"
