# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""When a pre-settled cast may return before the I/O thread writes it.

Nothing from the peer paces a pre-settled cast, so by default its caller
waits until the cast is written (see ``ProtonDriver._cast_presettled``).
A caster that pauses between casts is paced already, by its work or a
schedule: :class:`CastPacer` lets it hand casts over without that wait.
"""

from oslo_messaging_amqp1 import eventloop

# casters earn one pre-settled cast that need not wait to be written per
# CAST_PAUSE spent outside a cast, up to CAST_BURST (CastPacer.early).
# Back to back, the next cast comes 15-140 us after the last returned
# (p1-p99, native and green threads, 2 cores): 6-50 % of one.
CAST_PAUSE = 0.00025
CAST_BURST = 32
# ... of which this many may be on their way at once; none while the
# connection sent a call this recently (a 150 s soak, a call and a cast
# every 1 ms: 0-13 % more casts but 13-33 % fewer calls without it)
CAST_WINDOW = 8
CALLS_QUIET = 0.05


class CastPacer:
    """Early casts earned by the casters of one transport."""

    def __init__(self, enabled: bool) -> None:
        # the early casts on their way (None: send_window is off)
        self.slot = eventloop.Window(CAST_WINDOW) if enabled else None
        self.returned = 0.0   # when the last pre-settled cast did
        self.tokens = 0.0     # early casts saved

    def cast_returned(self) -> None:
        """A pre-settled cast returns to its caller now."""
        self.returned = eventloop.now()

    def early(self, ctl) -> bool:
        """May this pre-settled cast on ctl return before it is written?

        One early cast per CAST_PAUSE the casters spent outside a cast, up
        to CAST_BURST saved (so a caller on a schedule that fell behind
        catches up); only while the output is clear (Sends.output_clear),
        the connection carries no calls (none waits for its reply, none
        went out in the last CALLS_QUIET: calls go first, their requests
        would queue in the peer behind the casts) and on a peer that
        queues what its consumer has no credit for yet.
        """
        now = eventloop.now()
        away = max(0.0, now - self.returned)
        tokens = min(CAST_BURST, self.tokens + away / CAST_PAUSE)
        profile = ctl.profile
        replies = ctl.replies
        if (tokens < 1 or self.slot is None or profile is None or
                not profile.queues_presettled or replies.calls or
                now - replies.last_sent < CALLS_QUIET or
                not ctl.sends.output_clear()):
            self.tokens = tokens
            return False
        self.tokens = tokens - 1
        return True

    def drain(self, timeout: float = None) -> bool:
        """Wait until no early cast is on its way; False on timeout."""
        return self.slot is None or self.slot.drain(timeout)
