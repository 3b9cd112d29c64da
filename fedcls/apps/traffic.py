"""Bytes on the wire: each message the round loop sends to a site or receives from one, at the
size Flower serialises it to for gRPC between SuperLink and SuperNode (its protobuf:
flwr.common.serde.message_to_proto, metadata and records). Counted where the loop talks to its
Grid (fedcls.apps.federation.SiteOrderedGrid), so simulations -- where Flower passes messages in
memory -- and deployments report the same figure for the same records; training, evaluation and
the extensions' queries (CORAL's statistics) all count.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.common.serde import message_to_proto


def wire_bytes(message: Message) -> int:
    """The message's size on the wire: its protobuf's serialised length."""
    return message_to_proto(message).ByteSize()


class Traffic:
    """Bytes sent to and received from the sites since the last `take()`."""

    def __init__(self):
        self.to_sites = self.from_sites = 0

    def count(self, sent: Iterable[Message], received: Iterable[Message]) -> None:
        self.to_sites += sum(map(wire_bytes, sent))
        self.from_sites += sum(map(wire_bytes, received))

    def take(self) -> dict[str, int]:
        """{"to_sites": bytes, "from_sites": bytes} so far, and start counting again."""
        counted = {"to_sites": self.to_sites, "from_sites": self.from_sites}
        self.to_sites = self.from_sites = 0
        return counted
