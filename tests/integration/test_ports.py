"""Ports for a local stack's processes."""

from __future__ import annotations

import socket

import pytest

from shared.infra.ports import free_ports

pytestmark = pytest.mark.integration


def test_ports_chosen_together_are_distinct_and_free() -> None:
    ports = free_ports(40)
    assert len(set(ports)) == len(ports)
    for port in ports:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))  # raises if the port were taken
