# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What an RPC server or notification listener gets from the driver.

The I/O thread puts each message that arrives into its subscription's
``Inbox``; a thread of oslo.messaging's ``PollStyleListenerAdapter`` takes
it from there (``ProtonListener.poll``), decodes it into an ``Incoming``
and hands it to the server's executor. Replies and heartbeats go back
through the driver.

Handing messages to a threading executor from the I/O thread itself, to
save the poll thread's wake-up, was measured and not kept: paced (800 and
1,400 msg/s) one-way p50 went from 1.21 to 1.10 ms and server CPU from
0.43 to 0.40 s per 1,000 messages, but 3 KB notifications at full speed
fell from 3,474 to 2,726/s (medians of 6 runs); pushing only after a
0.5 ms pause kept full speed (-6 to +15 %) and lost the latency gain
(p50 1.29 -> 1.35 ms).
"""

from oslo_messaging._drivers import base

from oslo_messaging_amqp1 import codec
from oslo_messaging_amqp1 import eventloop
from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import tasks

LOG = green.IOLogger(__name__)


class Incoming(base.RpcIncomingMessage):
    """A request or notification received on one of our links."""

    def __init__(self, listener, rx, handle, ctxt, msg, message):
        request_id = message.id
        super().__init__(ctxt, msg, request_id)
        self._listener = listener
        self._rx = rx
        self._handle = handle
        self._reply_to = message.reply_to
        self._request_id = request_id
        self._settled = False

    def _settle(self, outcome: str) -> None:
        if not self._settled:
            self._settled = True
            self._listener.ctl.settle(self._rx, self._handle, outcome)

    def acknowledge(self) -> None:
        """Accept the delivery."""
        self._settle('accept')

    def requeue(self) -> None:
        """Release the delivery for redelivery."""
        self._settle('release')

    def reply(self, reply=None, failure=None) -> None:
        """Send the result of a call back to the caller."""
        if not self._reply_to:
            if self._request_id is not None:
                # a call (it has an id) nobody can answer: it ran as a cast
                LOG.warning('Dropped the reply to request %s: it has no '
                            'reply_to address', self._request_id)
            return
        message = codec.encode_reply(self._request_id, reply, failure)
        self._listener.driver.send_raw(self._reply_to, message, 'rpc-reply')

    def heartbeat(self) -> None:
        """Tell a monitoring caller that the call is still running."""
        if self._reply_to:
            self._listener.driver.send_raw(
                self._reply_to, codec.encode_heartbeat(self._request_id),
                'heartbeat')


class ProtonListener(base.PollStyleListener):
    """Messages of one RPC server or notification listener."""

    def __init__(self, driver, ctl, routes, credit, label, rpc=True):
        super().__init__(credit)
        self.driver = driver
        self.ctl = ctl
        self.rpc = rpc
        self.inbox = eventloop.Inbox()
        self.sub = tasks.Subscription(routes, self.inbox, credit, label)
        ctl.subscribe(self.sub)

    def _incoming(self, item):
        """The Incoming of an inbox item, or None (rejected as malformed)."""
        rx, handle, message = item
        try:
            ctxt, msg, monitor = codec.decode_request(message)
        except codec.DecodeError as exc:
            LOG.warning('Rejected a malformed message on %s: %s',
                        self.sub.label, exc)
            self.ctl.settle(rx, handle, 'malformed message: %s' % exc)
            return None
        incoming = Incoming(self, rx, handle, ctxt, msg, message)
        if self.rpc and monitor:
            incoming.client_timeout = monitor
        return incoming

    @base.batch_poll_helper
    def poll(self, timeout=None):
        """Return the next valid message, or None on timeout or stop."""
        deadline = None if timeout is None else eventloop.now() + timeout
        while True:
            left = None if deadline is None else deadline - eventloop.now()
            if left is not None and left <= 0:
                return None
            item = self.inbox.get(left)
            if item is None:
                return None
            incoming = self._incoming(item)
            if incoming is not None:
                return incoming

    def stop(self) -> None:
        """Make poll() return."""
        self.inbox.close()

    def cleanup(self) -> None:
        """Detach the links; undelivered messages go back to the peer."""
        self.ctl.unsubscribe(self.sub)
