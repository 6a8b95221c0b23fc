# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One class per AMQP 1.0 link the controller keeps, as pyngus handlers.

Each link owns its own work and reports to an owner object:

* :class:`SenderLink` (owner: sending.Sends) -- the tasks queued on one
  address, those in flight, the credit it waits for, its idle timer;
* :class:`ReceiverLink` (owner: receiving.Subscriptions) -- one source of
  a server or listener and the credit it owes back;
* :class:`ReplyLink` (owner: replies.Replies) -- this process's reply
  source.

Sender link lifecycle: declaring (RabbitMQ topology) -> attaching ->
active -> closed (idle for default_sender_link_timeout, refused, or
connection lost). Receiver links follow the same path without the idle
timeout. Everything here runs on the I/O thread.
"""

import uuid

from oslo_messaging_amqp1 import eventloop
from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import pyngus_compat

LOG = green.IOLogger(__name__)


def condition_text(condition) -> str:
    """An AMQP error condition as text for a log line or an exception."""
    if condition is None:
        return 'no reason given'
    return '%s: %s' % (condition.name, condition.description)


def destroy(obj) -> None:
    """Free a pyngus link or connection, whatever state it is in."""
    try:
        obj.destroy()
    except Exception as exc:
        LOG.debug('destroy %s: %s', obj, exc)


class SenderLink:
    """A cached sender link to one address and the tasks waiting on it.

    The owner answers ``owns(sender)``, ``transmit(sender, task)``,
    ``outcome(task, state, info)``, ``sender_gone(sender, why)``,
    ``forget_sender(sender)`` and ``drop_link(link)``.
    """

    def __init__(self, owner, address: str) -> None:
        self.owner = owner
        self.address = address
        self.link = None
        self.state = 'declaring'
        self.queue = []
        self.inflight = set()
        self.last_used = eventloop.now()
        self.idle_timer = None

    def open(self, sessions, loop, idle_timeout: float) -> None:
        """Attach on one of sessions; close once idle for idle_timeout."""
        self.state = 'attaching'
        self.link = sessions.sender(self.address, self.address, self,
                                    'sender-%s' % uuid.uuid4().hex)
        self.link.open()
        self._arm_idle(loop, idle_timeout)

    def _arm_idle(self, loop, timeout: float) -> None:
        def check():
            if not self.owner.owns(self):
                return
            idle = eventloop.now() - self.last_used
            if self.queue or self.link is None or \
                    self.inflight or idle < timeout:
                self.idle_timer = loop.call_later(
                    max(1.0, timeout - idle), check)
                return
            LOG.debug('Closing idle sender link to %s', self.address)
            self.owner.forget_sender(self)
            self.link.close()
        self.idle_timer = loop.call_later(timeout, check)

    def enqueue(self, task) -> None:
        """Queue task and send what the credit allows."""
        task.stage = self
        self.queue.append(task)
        self.flush()

    def take_tasks(self) -> tuple:
        """Stop: hand back (queued, in flight) tasks, cancel the timer."""
        if self.idle_timer:
            self.idle_timer.cancel()
        queued, inflight = self.queue, self.inflight
        self.queue, self.inflight = [], set()
        return queued, inflight

    def flush(self) -> None:
        """Transmit queued tasks while the link has credit."""
        link = self.link
        if self.state != 'active' or link is None:
            return
        queue = self.queue
        while queue and link.credit > 0:
            task = queue.pop(0)
            if task.waiter.done():
                continue
            self.owner.transmit(self, task)
        self.last_used = eventloop.now()

    def send(self, task, data: bytes) -> None:
        """Write an encoded message; unless pre-settled, report its outcome."""
        if task.presettled:
            pyngus_compat.send(self.link, data)
        else:
            def outcome(state, info):
                self.inflight.discard(task)
                self.owner.outcome(task, state, info)
            self.inflight.add(task)
            pyngus_compat.send(self.link, data, outcome)
        task.sent = True

    def describe(self, sent: bool) -> str:
        """Where a task waiting on this link is stuck, for a timeout."""
        link = self.link
        return 'sender link to %s %s, credit %s, %s in flight' % (
            self.address, self.state, link.credit if link else '-',
            'one' if sent else 'none')

    # pyngus SenderEventHandler
    def sender_active(self, link) -> None:
        self.state = 'active'
        self.flush()

    def credit_granted(self, link) -> None:
        self.flush()

    def sender_remote_closed(self, link, condition) -> None:
        why = condition_text(condition)
        # the tasks waiting on it report it (they fail or retry)
        LOG.info('AMQP 1.0 peer closed the sender link to %s: %s',
                 self.address, why)
        self.owner.sender_gone(self, why)
        link.close()

    def sender_failed(self, link, error) -> None:
        LOG.info('Sender link to %s failed: %s', self.address, error)
        self.owner.sender_gone(self, str(error))

    def sender_closed(self, link) -> None:
        pyngus_compat.abort_sends(link)
        self.owner.drop_link(link)


class ReceiverLink:
    """pyngus receiver callbacks for one link of a Subscription.

    Credit given back by settled messages is owed to the peer until half
    of the link's credit is: one flow frame per batch, not per message.
    ``starved`` is true while the peer has no credit left: a settlement
    then hurries (:meth:`controller.Controller.settle`).
    The owner answers ``receiver_gone(rx, why)``, ``drop_link(link)`` and
    ``hand_out(rx, handle, message)``.
    """

    kind = 'receiver'  # the link names' prefix

    def __init__(self, owner, sub, route, credit=1):
        self.owner = owner
        self.sub = sub
        self.route = route
        self.link = None
        self.owed = 0
        self.refill = max(1, credit // 2)
        self.credit = credit
        self.unflowed = 0   # received since the flow that covers them

    def attach(self, sessions, address, source) -> None:
        """Open the link with its credit on one of sessions (I/O thread)."""
        name = '%s-%s' % (self.kind, uuid.uuid4().hex)
        self.link = sessions.receiver(address, source, self, name)
        pyngus_compat.decode_in_python(self.link)
        self.link.add_capacity(self.credit)
        self.link.open()

    def give_credit(self) -> None:
        """One message is done with: flow once a batch is owed."""
        self.owed += 1
        if self.owed >= self.refill:
            self.link.add_capacity(self.owed)
            self.unflowed = max(0, self.unflowed - self.owed)
            self.owed = 0

    def took_one(self) -> None:
        """A message used one credit."""
        self.unflowed += 1

    @property
    def starved(self) -> bool:
        """True while the peer has no credit left to send with."""
        return self.unflowed >= self.credit

    def release(self, handle) -> None:
        """Give a delivery back unread, with no new credit (detaching)."""
        try:
            self.link.message_released(handle)
        except Exception as exc:
            LOG.debug('cannot release %s: %s', handle, exc)

    def attached(self) -> bool:
        """Is the link open on our side (a detach would be answered)?"""
        return self.link is not None and not self.link.closed

    # pyngus ReceiverEventHandler
    def receiver_active(self, link) -> None:
        LOG.debug('Receiving from %s', link.source_address)

    def receiver_remote_closed(self, link, condition) -> None:
        why = condition_text(condition)
        LOG.warning('AMQP 1.0 peer closed the receiver link from %s: %s',
                    self.route.address, why)
        link.close()
        self.owner.receiver_gone(self, why)

    def receiver_failed(self, link, error) -> None:
        LOG.warning('Receiver link from %s failed: %s',
                    self.route.address, error)
        self.owner.receiver_gone(self, str(error))

    def receiver_closed(self, link) -> None:
        self.owner.drop_link(link)
        if self.sub is not None:
            self.sub.gone(self)

    def message_received(self, link, message, handle) -> None:
        if self.sub.closed:
            # sent before the peer saw our detach: it can go elsewhere
            self.release(handle)
            return
        self.owner.hand_out(self, handle, message)


class ReplyLink(ReceiverLink):
    """The receiver of replies and heartbeats to this process's calls.

    The owner answers ``ready()``, ``gone(why)``, ``received(message)``
    and ``drop_link(link)``.
    """

    kind = 'reply'

    def __init__(self, owner, route, credit):
        super().__init__(owner, None, route, credit)
        self.address = None

    def receiver_active(self, link) -> None:
        self.address = link.source_address
        LOG.debug('Replies arrive at %s', self.address)
        self.owner.ready()

    def receiver_remote_closed(self, link, condition) -> None:
        why = condition_text(condition)
        LOG.warning('AMQP 1.0 peer closed the reply link: %s', why)
        link.close()
        self.owner.gone(why)

    def receiver_failed(self, link, error) -> None:
        self.owner.gone(str(error))

    def message_received(self, link, message, handle) -> None:
        link.message_accepted(handle)
        self.give_credit()
        self.owner.received(message)
