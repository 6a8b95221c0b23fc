# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""This process's reply link and the calls that wait for replies.

A call goes out only once the reply link has an address (a dynamic source
on a router or qpidd, a declared reply queue on RabbitMQ); its reply and
the server's heartbeats find it by correlation id. Runs on the I/O thread.
"""

import uuid

import oslo_messaging as om

from oslo_messaging_amqp1 import addressing
from oslo_messaging_amqp1 import codec
from oslo_messaging_amqp1 import eventloop
from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import links

LOG = green.IOLogger(__name__)


def _queue_name() -> str:
    """A new name for this process's reply queue on a broker."""
    return 'reply.' + uuid.uuid4().hex


class Replies:
    """The reply link, the calls waiting for it and those in flight."""

    def __init__(self, ctl) -> None:
        self.ctl = ctl
        self.link = None            # links.ReplyLink
        self.waiting = []           # calls waiting for the reply address
        self.calls = {}             # message id -> tasks.SendTask
        self.last_sent = 0.0        # when the last call went out
        self.retry_timer = None
        # RabbitMQ only: kept across reconnects, so late replies find it
        self.queue = _queue_name()
        # a refused declaration is retried at once, under a new name, only
        # once until the link attaches again: then after link_retry_delay
        self.retry_now = True

    @property
    def address(self):
        """Where replies to this process go (None until attached)."""
        return self.link.address if self.link is not None else None

    def ready_for(self, task) -> bool:
        """True when call task can go now; else it waits for the link."""
        if self.address is not None:
            return True
        task.stage = 'waiting for the reply link'
        self.waiting.append(task)
        self.attach()
        return False

    def track(self, task) -> None:
        """Address task's replies to us and expect them (transmit time)."""
        task.message.reply_to = self.address
        self.calls[task.message.id] = task
        self.last_sent = eventloop.now()
        self._cover()
        if task.monitor and task.monitor_timer is None:
            self._arm_monitor(task)

    def _cover(self) -> None:
        """Credit for every reply due, granted before the call goes out.

        Replies are pre-settled by default, and a router drops a
        pre-settled message that finds no credit: with reply_link_credit
        alone, 498 of 1,000 green calls in flight lost their reply on
        qdrouterd.
        """
        link = self.link.link
        short = len(self.calls) - link.capacity
        if short > 0:
            link.add_capacity(short)

    def forget(self, task) -> None:
        """Stop expecting a reply to task (sent again, failed or done)."""
        call_id = task.call_id
        if call_id is not None:
            self.calls.pop(call_id, None)

    def cancel(self, task) -> None:
        """Task timed out or failed: forget it wherever it waits."""
        self.forget(task)
        if task in self.waiting:
            self.waiting.remove(task)

    # ------------------------------------------------------------------
    # the link
    # ------------------------------------------------------------------

    def attach(self) -> None:
        """Attach the reply link unless it is there (connection up)."""
        ctl = self.ctl
        if self.link is not None or not ctl.active:
            return
        route = ctl.addresser.reply_listen(self.queue)
        credit = ctl.opts.reply_link_credit
        rx = links.ReplyLink(self, route or addressing.Route(None), credit)
        self.link = rx

        def attach(error=None):
            if self.link is not rx or not ctl.active:
                return
            if error:
                LOG.error('Cannot set up the reply queue: %s', error)
                self.renamed(error)
                self.gone(error, 0 if self.retry_now else None)
                self.retry_now = False
                return
            source = route.address if route else None
            rx.attach(ctl.sessions, source or ctl.container_id, source)
        ctl.declare_then(route, attach)

    def renamed(self, why: str) -> None:
        """Take a new reply queue name: the old one cannot be declared.

        On a RabbitMQ 3.x cluster the reply queue lives on one node; while
        that node is down its name is refused with 404 (home node down) on
        every other node, and calls would wait for that node's return.
        The new name is tried at once: calls waiting for the link would
        otherwise wait link_retry_delay (10 s), past a call's timeout.
        Calls whose replies were due to the old queue fail now with
        MessagingTimeout: nothing reads that queue any more, so waiting
        out their timeout (60 s by default) would only delay the caller.
        """
        old, self.queue = self.queue, _queue_name()
        LOG.info('Reply queue %s: using %s from now on', old, self.queue)
        lost, self.calls = self.calls, {}
        for task in lost.values():
            self.ctl.sends.fail(task, om.MessagingTimeout(
                'No reply to %s can arrive: its reply queue %s cannot be '
                'declared again (%s)'
                % (task.label, old, why)))

    def connection_up(self) -> None:
        """Attach again if calls wait or replies are due."""
        if self.calls or self.waiting:
            self.attach()

    def connection_lost(self) -> None:
        """The link died with the connection."""
        self.link = None

    def ready(self) -> None:
        """The reply address is known: send the calls that waited."""
        self.retry_now = True
        waiting, self.waiting = self.waiting, []
        for task in waiting:
            self.ctl.sends.dispatch(task)

    def gone(self, why: str, delay=None) -> None:
        """The reply link died: attach again in delay s (link_retry_delay)."""
        self.link = None
        ctl = self.ctl
        if not ctl.active:
            return
        if delay is None:
            delay = ctl.opts.link_retry_delay
        elif self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        if self.retry_timer is None:
            def retry():
                self.retry_timer = None
                if self.waiting or self.calls:
                    self.attach()
            self.retry_timer = ctl.loop.call_later(delay, retry)

    def drop_link(self, link) -> None:
        """Free the closed link once its callbacks returned."""
        self.ctl.drop_link(link)

    def received(self, message) -> None:
        """Hand a reply or heartbeat to the call waiting for it."""
        cid = message.correlation_id
        # our ids are strings; a binary one arrives as an unhashable
        # memoryview and must not break the reply link
        task = self.calls.get(cid) if isinstance(cid, str) else None
        if task is None:
            LOG.warning('Dropped a reply for an unknown or expired call '
                        '(correlation id %r)', message.correlation_id)
            return
        if codec.is_heartbeat(message):
            if task.monitor:
                if task.monitor_timer is not None:
                    task.monitor_timer.cancel()
                self._arm_monitor(task)
            return
        del self.calls[cid]
        task.finish(message)

    # ------------------------------------------------------------------
    # the call monitor
    # ------------------------------------------------------------------

    def _arm_monitor(self, task) -> None:
        task.monitor_timer = self.ctl.loop.call_later(
            task.monitor, lambda: self._monitor_expired(task))

    def _monitor_expired(self, task) -> None:
        if task.waiter.done():
            return
        self.forget(task)
        task.finish(error=om.MessagingTimeout(
            'No heartbeat from the server of %s within the call monitor '
            'timeout of %ss' % (task.label, task.monitor)))

    # ------------------------------------------------------------------
    # failing what waits
    # ------------------------------------------------------------------

    def fail_waiting(self, text: str) -> None:
        """Fail the calls waiting for the reply link."""
        waiting, self.waiting = self.waiting, []
        for task in waiting:
            self.ctl.sends.fail(task, om.MessageDeliveryFailure(text))

    def fail_all(self, text: str) -> None:
        """Fail every call, waiting or sent (shutdown)."""
        self.fail_waiting(text)
        for task in list(self.calls.values()):
            self.ctl.sends.fail(task, om.MessageDeliveryFailure(text))
