# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The receiver links of RPC servers and notification listeners.

A :class:`tasks.Subscription` gets one :class:`links.ReceiverLink` per
source, attached again after every reconnect and after link_retry_delay
when the peer closes one. What arrives goes to the subscription's inbox;
the consumer settles it through :meth:`Subscriptions.settle`. Runs on the
I/O thread.
"""

import proton

from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import links

LOG = green.IOLogger(__name__)

# how long unsubscribe waits for the peer to answer a detach
DETACH_WAIT = 2.0


class Subscriptions:
    """Every subscription of one connection and its receiver links."""

    def __init__(self, ctl) -> None:
        self.ctl = ctl
        self.subs = []

    def add(self, sub) -> None:
        """Start receiving for sub."""
        self.subs.append(sub)
        if self.ctl.active:
            self._attach_sub(sub)

    def connection_up(self) -> None:
        """Attach every subscription's links on a new connection."""
        for sub in self.subs:
            self._attach_sub(sub)

    def connection_lost(self) -> None:
        """The links died with the connection."""
        for sub in self.subs:
            sub.links = []

    def _attach_sub(self, sub) -> None:
        if sub.closed:
            return
        for route in sub.routes(self.ctl.addresser):
            self._attach_receiver(sub, route)

    def _attach_receiver(self, sub, route) -> None:
        ctl = self.ctl
        rx = links.ReceiverLink(self, sub, route, sub.credit)
        sub.links.append(rx)

        def attach(error=None):
            if sub.closed or not ctl.active or rx not in sub.links:
                return
            if error:
                LOG.error('Cannot subscribe to %s: %s', route.address, error)
                self.receiver_gone(rx, error)
                return
            rx.attach(ctl.sessions, route.address, route.address)
        ctl.declare_then(route, attach)

    def receiver_gone(self, rx, why: str) -> None:
        """A receiver died: attach it again after link_retry_delay."""
        ctl = self.ctl
        sub = rx.sub
        if rx in sub.links:
            sub.links.remove(rx)
        if sub.closed or not ctl.active:
            return
        ctl.forget_declared()

        def again():
            if not sub.closed and ctl.active:
                self._attach_receiver(sub, rx.route)
        ctl.loop.call_later(ctl.opts.link_retry_delay, again)

    def hand_out(self, rx, handle, message) -> None:
        """Pass a message of rx to its consumer, which settles it lazily."""
        rx.took_one()
        self.ctl.loop.expect_call()
        rx.sub.inbox.put((rx, handle, message))

    def drop_link(self, link) -> None:
        """Free a closed link once its callbacks returned."""
        self.ctl.drop_link(link)

    def remove(self, sub, waiter) -> None:
        """Release sub's unread messages, detach; waiter fires when done."""
        sub.closed = True
        if sub in self.subs:
            self.subs.remove(sub)
        # released before the detach, so that the peer may route them on
        # (after it, a router reports them to their senders as failed)
        while True:
            item = sub.inbox.get(0)
            if item is None:
                break
            item[0].release(item[1])
        sub.detached = waiter
        for rx in sub.links:
            if rx.attached():
                sub.detaching.add(rx)
                rx.link.close()
        sub.links = []
        if not self.ctl.active:
            sub.detaching.clear()   # nobody will answer
        if sub.detaching:
            self.ctl.loop.call_later(DETACH_WAIT, waiter.set)
        else:
            waiter.set()

    def settle(self, rx, handle, outcome: str) -> None:
        """Settle a delivery of rx with outcome and give its credit back."""
        link = rx.link
        if link is None or link.closed or self.ctl.conn is None:
            return
        try:
            if outcome == 'accept':
                link.message_accepted(handle)
            elif outcome == 'release':
                link.message_released(handle)
            elif outcome == 'modify':
                link.message_modified(handle, True, False, None)
            else:
                link.message_rejected(handle, proton.Condition(
                    'amqp:decode-error', outcome))
            rx.give_credit()
        except Exception as exc:
            LOG.debug('cannot settle %s: %s', handle, exc)
