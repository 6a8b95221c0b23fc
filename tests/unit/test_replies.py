# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The reply queue when RabbitMQ refuses its declaration.

On a RabbitMQ 3.x cluster whose node holding the reply queue died, the
name is refused (404, home node down) until that node is back. The
controller is faked here (no in-process peer declares queues); the
functional cluster test kills a real node.
"""

import types

import oslo_messaging as om

from oslo_messaging_amqp1 import addressing
from oslo_messaging_amqp1 import links
from oslo_messaging_amqp1 import replies

REFUSED = ('Queue.declare: (404) NOT_FOUND - home node of durable queue '
           'is down or inaccessible')


class FakeController:
    """Answers each declaration with the next of `answers` (None: ok)."""

    def __init__(self, answers):
        self.active = True
        self.answers = list(answers)
        self.declared = []          # reply queue names, in order
        self.dispatched = []        # calls sent once the link attached
        self.failed = []            # (call, error)
        self.sends = types.SimpleNamespace(
            dispatch=self.dispatched.append,
            fail=lambda task, error: self.failed.append((task, error)))
        self.timers = []            # [delay, fn, cancelled]
        self.sessions = None
        self.container_id = 'test'
        self.opts = types.SimpleNamespace(reply_link_credit=200,
                                          link_retry_delay=10)
        self.addresser = types.SimpleNamespace(reply_listen=self._route)
        self.loop = types.SimpleNamespace(call_later=self._call_later)

    def _route(self, queue):
        return addressing.Route('/queues/' + queue,
                                [addressing.Queue(queue, True, True, False,
                                                  ())])

    def _call_later(self, delay, fn):
        timer = [delay, fn, False]
        self.timers.append(timer)
        return types.SimpleNamespace(
            cancel=lambda: timer.__setitem__(2, True))

    def declare_then(self, route, then):
        self.declared.append(route.declare[0].name)
        then(self.answers.pop(0))

    def run_timers(self):
        """Fire the live timers; returns their delays."""
        due, self.timers = self.timers, []
        fired = []
        for delay, fn, cancelled in due:
            if not cancelled:
                fired.append(delay)
                fn()
        return fired


def _attached(monkeypatch):
    """Record the sources reply links attach to (no peer here)."""
    sources = []

    def attach(rx, sessions, address, source):
        sources.append(source)
        rx.link = types.SimpleNamespace(capacity=rx.credit,
                                        add_capacity=lambda n: None)
    monkeypatch.setattr(links.ReplyLink, 'attach', attach)
    return sources


def test_a_refused_reply_queue_is_renamed_and_tried_at_once(monkeypatch):
    sources = _attached(monkeypatch)
    ctl = FakeController([REFUSED, None])
    owner = replies.Replies(ctl)
    call = types.SimpleNamespace(stage=None)
    assert not owner.ready_for(call)
    assert len(ctl.declared) == 1 and not sources
    # the new name goes out now, not after link_retry_delay: the call
    # would time out before that
    assert ctl.run_timers() == [0]
    assert len(ctl.declared) == 2 and ctl.declared[0] != ctl.declared[1]
    assert sources == ['/queues/' + ctl.declared[1]]
    assert owner.waiting == [call]


def test_a_second_refusal_waits_for_link_retry_delay(monkeypatch):
    sources = _attached(monkeypatch)
    ctl = FakeController([REFUSED, REFUSED, None, REFUSED, None])
    owner = replies.Replies(ctl)
    first = types.SimpleNamespace(stage=None)
    owner.ready_for(first)
    assert ctl.run_timers() == [0]
    # refused again: a broker that refuses every name is not hammered
    assert ctl.run_timers() == [10]
    assert len(set(ctl.declared)) == 3 and len(sources) == 1
    # once attached, the next refusal is again retried at once
    owner.link.receiver_active(
        types.SimpleNamespace(source_address=sources[0]))
    assert ctl.dispatched == [first]
    owner.connection_lost()
    owner.ready_for(types.SimpleNamespace(stage=None))
    assert ctl.run_timers() == [0]
    assert len(sources) == 2


def test_a_refusal_cuts_a_pending_retry_short(monkeypatch):
    _attached(monkeypatch)
    ctl = FakeController([REFUSED, None])
    owner = replies.Replies(ctl)
    owner.gone('link closed by the peer')
    assert [t[0] for t in ctl.timers] == [10]
    owner.ready_for(types.SimpleNamespace(stage=None))
    assert ctl.run_timers() == [0]
    assert len(ctl.declared) == 2


def test_calls_due_to_the_lost_queue_fail_at_once(monkeypatch):
    sources = _attached(monkeypatch)
    ctl = FakeController([None, REFUSED, None])
    owner = replies.Replies(ctl)
    first = types.SimpleNamespace(stage=None)
    owner.ready_for(first)
    owner.link.receiver_active(
        types.SimpleNamespace(source_address=sources[0]))
    # a call out, its reply due to the first queue, when the connection
    # drops and that queue's node is gone with it
    sent = types.SimpleNamespace(message=types.SimpleNamespace(id='m1'),
                                 monitor=None, monitor_timer=None,
                                 call_id='m1', label='call echo')
    owner.track(sent)
    assert sent.message.reply_to == sources[0]
    owner.connection_lost()
    owner.connection_up()
    # it fails now, not at its timeout; the new queue is in use at once
    assert [task for task, _ in ctl.failed] == [sent]
    error = ctl.failed[0][1]
    assert isinstance(error, om.MessagingTimeout)
    assert ctl.declared[0] in str(error) and 'home node' in str(error)
    assert owner.calls == {}
    ctl.run_timers()
    # the next call sets up the new queue
    owner.ready_for(types.SimpleNamespace(stage=None))
    assert sources[1] == '/queues/' + ctl.declared[2] != sources[0]
