"""Free TCP ports for the processes of a local stack."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now. Every probing socket stays bound until all are chosen: the
    kernel may hand a port it just released straight out again, and Kafka refuses a broker whose client and
    controller listeners got the same one."""
    with ExitStack() as held:
        probes = [held.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def free_port() -> int:
    return free_ports(1)[0]
