# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What callers hand the controller: a message to send, a set of sources.

The driver builds these on the caller's thread; from then on only the I/O
thread changes them, and callers only wait on ``SendTask.waiter`` or read
``Subscription.inbox``.
"""

from oslo_messaging_amqp1 import eventloop


class SendTask:
    """A message to deliver: cast, call, reply, heartbeat or notification.

    ``route`` maps the current addresser to an addressing.Route.
    """

    def __init__(self, route, message, timeout, retry, presettled,
                 is_call=False, monitor=None, label='message',
                 on_done=None):
        self.route = route
        self.on_done = on_done  # on_done(task, error) once finished
        self.message = message
        self.deadline = eventloop.now() + timeout
        self.timeout = timeout
        self.retry = retry  # None or <0: forever
        self.presettled = presettled
        self.is_call = is_call
        self.monitor = monitor
        self.label = label
        self.waiter = eventloop.Waiter()
        self.attempts = 0
        self.timer = None
        self.monitor_timer = None
        self.sent = False
        # where it waits: a text, or the links.SenderLink it is queued on
        self.stage = 'queued'

    @property
    def call_id(self):
        """The message id a reply correlates to (None for a non-call)."""
        return getattr(self.message, 'id', None) if self.is_call else None

    def can_retry(self) -> bool:
        """Is one more attempt allowed (deadline aside)?"""
        return self.retry is None or self.retry < 0 or \
            self.attempts <= self.retry

    def finish(self, value=None, error=None) -> None:
        """Complete the task once (I/O thread)."""
        if self.waiter.done():
            return
        for t in (self.timer, self.monitor_timer):
            if t is not None:
                t.cancel()
        if error is not None:
            self.waiter.fail(error)
        else:
            self.waiter.set(value)
        if self.on_done is not None:
            self.on_done(self, error)


class Subscription:
    """Receivers of one server or listener: routes, inbox and credit."""

    def __init__(self, routes, inbox, credit, label):
        self.routes = routes  # addresser -> [Route]
        self.inbox = inbox
        self.credit = credit
        self.label = label
        self.links = []
        self.closed = False
        self.detaching = set()  # receivers whose detach the peer owes
        self.detached = None    # Waiter set once it has answered them all

    def gone(self, rx) -> None:
        """rx's detach was answered: the waiter fires once all are."""
        self.detaching.discard(rx)
        if not self.detaching and self.detached is not None:
            self.detached.set()
