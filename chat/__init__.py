"""PyNet chat: a line-based TCP chat service, the workload PyNet deploys."""

__version__ = "0.1.0"

#: The chat port, the one definition: the server, client, health check, the deploy tools and the
#: launch rules use it; the Dockerfile and the chat role spell it too (tests/test_contracts.py).
PORT = 5050
