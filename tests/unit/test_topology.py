# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""RabbitMQ 4's /management declarer: requests paced by a window.

The link pair is faked (no peer here answers /management); the
functional tests run the declarer against a real RabbitMQ 4.
"""

import types

import proton

from oslo_messaging_amqp1 import addressing
from oslo_messaging_amqp1 import pyngus_compat
from oslo_messaging_amqp1 import topology


class FakeLink:
    def __init__(self):
        self.sent = []
        self._pn_link = types.SimpleNamespace(properties=None)

    def open(self):
        pass

    def add_capacity(self, count):
        pass

    def send(self, message):
        self.sent.append(message)

    def message_accepted(self, handle):
        pass


class FakeConnection:
    def create_sender(self, *args, **kwargs):
        self.sender = FakeLink()
        return self.sender


def _declarer(monkeypatch):
    receiver = FakeLink()
    monkeypatch.setattr(pyngus_compat, 'receiver_on_session_of',
                        lambda *args, **kwargs: receiver)
    conn = FakeConnection()
    declarer = topology.ManagementDeclarer(conn)
    declarer.sender_active(conn.sender)
    declarer.receiver_active(receiver)
    return declarer, conn.sender, receiver


def _answer(declarer, receiver, request, status='201'):
    declarer.message_received(receiver, proton.Message(
        correlation_id=request.id, subject=status), 0)


def test_at_most_a_window_of_requests_on_the_wire(monkeypatch):
    declarer, sender, receiver = _declarer(monkeypatch)
    done = []
    for n in range(40):
        queue = addressing.Queue('q%d' % n, True, False, False, ())
        declarer.declare([queue], done.append)
    assert len(sender.sent) == topology.MAX_IN_FLIGHT
    answered = 0
    while sender.sent:
        _answer(declarer, receiver, sender.sent.pop(0))
        answered += 1
        assert len(sender.sent) <= topology.MAX_IN_FLIGHT
    assert answered == 40
    assert done == [None] * 40


def test_a_refusal_fails_its_batch_and_the_queue_moves_on(monkeypatch):
    declarer, sender, receiver = _declarer(monkeypatch)
    done = []
    for n in range(topology.MAX_IN_FLIGHT + 1):
        queue = addressing.Queue('r%d' % n, True, False, False, ())
        declarer.declare([queue], done.append)
    _answer(declarer, receiver, sender.sent.pop(0), status='409')
    assert done and 'RabbitMQ refused' in done[0]
    # the refused request's slot went to the batch that waited
    assert len(sender.sent) == topology.MAX_IN_FLIGHT
