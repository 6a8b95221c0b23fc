# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Every send of one connection, from queued to settled or failed.

A :class:`tasks.SendTask` waits for the connection (``pending``), then for
its sender link (``links.SenderLink.queue``), then for the peer's outcome
(``inflight``). A release, an aborted delivery or a refused link is one
failed attempt: :meth:`Sends.retry_or_fail` sends it again after
link_retry_delay while its retry budget and deadline allow. Runs on the
I/O thread.
"""

import oslo_messaging as om
import pyngus

from oslo_messaging_amqp1 import eventloop
from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import links

LOG = green.IOLogger(__name__)

# Pre-settled sends complete once their bytes left for the socket: past
# HIGH bytes waiting in the transport, callers wait until it drains to LOW,
# so a fast caster cannot fill memory faster than the network takes it.
OUTPUT_HIGH_WATER = 1024 * 1024
OUTPUT_LOW_WATER = 256 * 1024
# a pre-settled cast may return before it is written while the socket's
# send queue holds less than this (see the driver's casts)
CLEAR_SOCKET_QUEUE = 64 * 1024

_OUTCOME_NAMES = {pyngus.SenderLink.REJECTED: 'rejected',
                  pyngus.SenderLink.MODIFIED: 'modified',
                  pyngus.SenderLink.TIMED_OUT: 'timed out'}


class Sends:
    """The sender links of one connection and the tasks on their way."""

    def __init__(self, ctl) -> None:
        self.ctl = ctl
        self.loop = ctl.loop
        self.opts = ctl.opts
        self.senders = {}           # address -> links.SenderLink
        self.pending = []           # tasks waiting for the connection
        self.drain_waiters = []     # pre-settled sends until output drains
        self.unwritten = 0          # bytes given to proton, not yet written
        # read by callers: the last write emptied proton's output
        self.output_empty = False

    # ------------------------------------------------------------------
    # from queued to the wire
    # ------------------------------------------------------------------

    def dispatch(self, task) -> None:
        """Send task now, or queue it where it has to wait."""
        if task.waiter.done():
            return
        ctl = self.ctl
        if task.timer is None:
            task.timer = self.loop.call_later(
                max(0.0, task.deadline - eventloop.now()),
                lambda: self.expire(task))
        if ctl.closed:
            self.fail(task, om.MessageDeliveryFailure(
                'the transport was cleaned up'))
            return
        if not ctl.active:
            if ctl.auth_error:
                self.fail(task, om.MessageDeliveryFailure(ctl.auth_error))
                return
            task.stage = 'waiting for the connection'
            self.pending.append(task)
            return
        if task.is_call and not ctl.replies.ready_for(task):
            return
        try:
            route = task.route(ctl.addresser)
        except Exception as exc:
            self.fail(task, om.MessageDeliveryFailure(
                'no address for %s: %s' % (task.label, exc)))
            return
        sender = self.senders.get(route.address)
        if sender is None:
            sender = self._new_sender(route)
        sender.enqueue(task)

    def _new_sender(self, route) -> links.SenderLink:
        sender = links.SenderLink(self, route.address)
        self.senders[route.address] = sender
        self.ctl.declare_then(route,
                              lambda err: self._declared(sender, err))
        return sender

    def _declared(self, sender, error) -> None:
        if not self.owns(sender):
            return
        if error:
            LOG.error('Cannot send to %s: %s', sender.address, error)
            self.sender_gone(sender, error)
            return
        sender.open(self.ctl.sessions, self.loop,
                    self.opts.default_sender_link_timeout)

    def owns(self, sender) -> bool:
        """Is sender the current link to its address?"""
        return self.senders.get(sender.address) is sender

    def forget_sender(self, sender) -> None:
        """The link closes: the next send to its address makes a new one."""
        if self.owns(sender):
            del self.senders[sender.address]

    def transmit(self, sender, task) -> None:
        """Write task's message on sender's link (link has credit)."""
        task.attempts += 1
        if task.message.body is None and self.ctl.profile.needs_body:
            # a heartbeat: RabbitMQ 4 drops messages without a body section
            task.message.body = b''
        if task.is_call:
            self.ctl.replies.track(task)
        data = task.message.encode()
        self.unwritten += len(data)
        sender.send(task, data)
        if task.presettled and not task.is_call:
            if self.backlog() > OUTPUT_HIGH_WATER:
                self.drain_waiters.append(task)
            else:
                task.finish()

    # ------------------------------------------------------------------
    # outcomes, retries, failures
    # ------------------------------------------------------------------

    def outcome(self, task, state, info) -> None:
        """The peer settled task's delivery with state."""
        if task.waiter.done():
            return
        S = pyngus.SenderLink
        if state == S.ACCEPTED:
            if not task.is_call:
                task.finish()
            return
        if state == S.RELEASED or (state == S.MODIFIED and
                                   not info.get('delivery-failed')):
            LOG.debug('%s released, resending in %ss if it may',
                      task.label, self.opts.link_retry_delay)
            self.retry_or_fail(task, '%s was not delivered: nobody consumes '
                               'its address (released)' % task.label)
            return
        if state == S.ABORTED:
            # link or connection gone before an outcome: try again
            self.retry_or_fail(task, '%s: connection lost before delivery'
                               % task.label)
            return
        if state == S.MODIFIED:
            # delivery-failed: forwarded, then its route was lost (a
            # router on the way died); at most once, so not sent again
            self.fail(task, om.MessageDeliveryFailure(
                '%s: delivery failed on the way to its consumer (outcome '
                'modified, delivery-failed): it may have reached it, so it '
                'is not sent again' % task.label))
            return
        detail = info.get('condition') if info else None
        self.fail(task, om.MessageDeliveryFailure(
            '%s was refused by the AMQP 1.0 peer (outcome %s%s)' %
            (task.label, _OUTCOME_NAMES.get(state, 'unknown'),
             ': %s' % detail if detail else '')))

    def retry_or_fail(self, task, text: str, delay: float = None) -> None:
        """One attempt failed: go again after delay if allowed, else fail.

        delay defaults to link_retry_delay; 0 dispatches at once.
        """
        self.ctl.replies.forget(task)
        if not task.can_retry():
            self.fail(task, om.MessageDeliveryFailure(text))
        elif delay == 0:
            self.dispatch(task)
        else:
            self.loop.call_later(
                self.opts.link_retry_delay if delay is None else delay,
                lambda: self.dispatch(task))

    def fail(self, task, error) -> None:
        """Complete task with error, wherever it was."""
        self.ctl.replies.forget(task)
        task.finish(error=error)

    def expire(self, task) -> None:
        """Task's deadline passed: fail it with what held it up."""
        if task.waiter.done():
            return
        ctl = self.ctl
        ctl.replies.cancel(task)
        if task in self.pending:
            self.pending.remove(task)
        if ctl.auth_error:
            err = om.MessageDeliveryFailure(ctl.auth_error)
        elif task.is_call and task.sent:
            err = om.MessagingTimeout(
                'Timed out waiting for a reply to %s after %ss' %
                (task.label, task.timeout))
        else:
            why = ctl.last_error if not ctl.active else task.stage
            if isinstance(why, links.SenderLink):
                why = why.describe(task.sent)
            err = om.MessagingTimeout(
                'Timed out sending %s after %ss (%s)' %
                (task.label, task.timeout, why))
        task.finish(error=err)

    def sender_gone(self, sender, why: str) -> None:
        """A sender link died: a failed attempt for its waiting tasks."""
        self.forget_sender(sender)
        queued, _ = sender.take_tasks()
        for task in queued:
            if task.waiter.done():
                continue
            task.attempts += 1
            self.retry_or_fail(
                task, '%s: the AMQP 1.0 peer refused the link to %s (%s)' %
                (task.label, sender.address, why))

    def drop_link(self, link) -> None:
        """Free a closed link once its callbacks returned."""
        self.ctl.drop_link(link)

    # ------------------------------------------------------------------
    # output backpressure for pre-settled sends
    # ------------------------------------------------------------------

    def written(self, count: int, empty: bool) -> None:
        """count bytes reached the socket; empty: proton holds no more."""
        self.unwritten = 0 if empty else max(0, self.unwritten - count)
        self.output_empty = empty
        if self.drain_waiters and self.backlog() < OUTPUT_LOW_WATER:
            self.release_drain_waiters()

    def output_clear(self) -> bool:
        """May a pre-settled cast skip waiting for its write (any thread)?

        Proton's output was empty at the last write and the socket's send
        queue is short now: asked per cast, not at every write.
        """
        return (self.output_empty and
                self.ctl.pump.queued() < CLEAR_SOCKET_QUEUE)

    def backlog(self) -> int:
        """Bytes sent but not yet on the wire.

        The transport's pending output, what proton keeps in the sessions
        beyond the peer's incoming window, and the bytes handed to proton
        since its output was last empty: proton reports at most one frame
        of pending output, while the frames it made of transfers a peer's
        large window let through wait in a buffer of its own (1 GB after
        6 s of 64 KB casts to RabbitMQ 3.10, before this was counted).
        """
        total = self.ctl.conn.has_output + self.unwritten
        if self.ctl.sessions is not None:
            # per session, not per sender: a server has a sender per caller
            total += self.ctl.sessions.outgoing_bytes()
        return total

    def release_drain_waiters(self) -> None:
        """Complete the pre-settled sends held back by a full buffer."""
        waiters, self.drain_waiters = self.drain_waiters, []
        for task in waiters:
            task.finish()

    # ------------------------------------------------------------------
    # the connection comes and goes
    # ------------------------------------------------------------------

    def connection_up(self) -> None:
        """Send what waited for the connection."""
        pending, self.pending = self.pending, []
        for task in pending:
            self.dispatch(task)

    def connection_lost(self) -> None:
        """Links died with the connection: their tasks go back in line.

        What was written is gone with the socket: at most once, as sent.
        """
        self.release_drain_waiters()
        self.unwritten = 0
        self.output_empty = False
        senders, self.senders = self.senders, {}
        for sender in senders.values():
            queued, inflight = sender.take_tasks()
            self.pending.extend(queued)
            for task in inflight:
                if not task.waiter.done():
                    self.retry_or_fail(
                        task, '%s: connection lost before delivery was '
                        'confirmed' % task.label, delay=0)

    def fail_pending(self, text: str) -> None:
        """Fail what waits for the connection with MessageDeliveryFailure."""
        pending, self.pending = self.pending, []
        for task in pending:
            self.fail(task, om.MessageDeliveryFailure(text))

    def shutdown(self, text: str) -> None:
        """Fail every task still queued on a sender link (closing)."""
        senders, self.senders = self.senders, {}
        for sender in senders.values():
            for task in sender.queue:
                self.fail(task, om.MessageDeliveryFailure(text))
