"""Wakeups that survive Thespian's transmit-only mode (see the table in
``backstage_actors._thespian``).

An actor process holds at most 20 messages in flight and queues the rest; at 950 queued (a
target that takes nothing: stopped, or far slower than the sender) ``asyncTransportBase`` drains
its queue before it reads anything again, calling ``run(TransmitOnly)`` until 780 are left or
the oldest message's time (5 minutes) is up. ``wakeupTransportBase`` waits there only until the
next wakeup is due and then hands that wakeup to its caller, as it hands one to a caller
waiting for a message; but the drain loop wants only a count of transmits, and drops it. So each
wakeup that came due while a process only transmitted was lost, and a timer that arms the next
one when it fires (a subscriber's slow poll and its next page) was a chain ended for good.

Here a Backstage transport that only transmits waits on its transmits alone and leaves every
wakeup pending: the first run that handles messages again finds them overdue and delivers them.
It puts the transport's deadline back when it ends: the drain runs inside a handler's send, and
the loop that ran the handler goes on waiting for that deadline (the next wakeup's).
"""

from __future__ import annotations

from typing import Any

from thespian.system.transport import Thespian__Run_Expired, TransmitOnly
from thespian.system.transport.wakeupTransportBase import wakeupTransportBase

from .auth import AuthenticatedTCPTransport

__all__ = ["keep_wakeups_while_transmitting"]

_thespians_run_subtransport = wakeupTransportBase._run_subtransport


def _run_subtransport(self: Any, incoming_handler: Any, max_runtime: Any) -> Any:
    if not isinstance(self, AuthenticatedTCPTransport) or not (
        incoming_handler is TransmitOnly or isinstance(incoming_handler, TransmitOnly)
    ):
        return _thespians_run_subtransport(self, incoming_handler, max_runtime)
    # Transmits only: wait for them up to the caller's limit, not for the next wakeup, and do
    # not take the wakeups that are due out of the pending ones. Then the deadline is put back:
    # this run is nested in a handler's send, and the loop that ran the handler goes on with it
    # (the next wakeup's, or its own limit); left at this run's limit, a wakeup armed before
    # came only once that passed (up to a transmit's 5 minutes: 300 s here), however overdue.
    outer = getattr(self, "_run_time", None)  # (none before a process's first run)
    self.run_time = max_runtime
    try:
        result = self._runWithExpiry(incoming_handler)
    finally:
        if outer is not None:
            self.run_time = outer
    return None if isinstance(result, Thespian__Run_Expired) else result


def keep_wakeups_while_transmitting() -> None:
    """Patch ``wakeupTransportBase._run_subtransport`` (once) so that a Backstage system's TCP
    transport keeps its wakeups while it only transmits; other transports run as before."""
    if wakeupTransportBase._run_subtransport is not _run_subtransport:
        wakeupTransportBase._run_subtransport = _run_subtransport
