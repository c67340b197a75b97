"""The patches ``backstage_actors._thespian`` makes to Thespian, each checked on its own."""

from __future__ import annotations

from thespian.system.transport import ReceiveEnvelope, TransmitIntent

from backstage_actors import _thespian


class Loud:
    """A message that counts how often it is turned into text."""

    def __init__(self) -> None:
        self.formatted = 0

    def __str__(self) -> str:
        self.formatted += 1
        return "x" * 100_000


def test_transport_log_lines_name_the_message_type_without_formatting_it() -> None:
    _thespian.terse_messages()
    message = Loud()

    received = ReceiveEnvelope("sender", message).identify()
    sent = TransmitIntent("target", message).identify()

    assert message.formatted == 0
    assert "Loud" in received and "sender" in received
    assert "Loud" in sent and "target" in sent
