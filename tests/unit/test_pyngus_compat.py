# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The pyngus internals the driver relies on, checked on the installed one.

If pyngus changes what pyngus_compat reaches into, the first test fails
with the list of what is gone: update pyngus_compat (and its supported
range) before shipping with that pyngus.
"""

import types

import proton
import pyngus
from pyngus import link as pyngus_link
import pytest

from oslo_messaging_amqp1 import codec
from oslo_messaging_amqp1 import pyngus_compat
from oslo_messaging_amqp1 import sending
from tests.unit import helpers


def test_installed_pyngus_has_every_internal_used():
    assert pyngus_compat.missing_internals() == []


def test_remote_detach_counts_as_close_once_installed():
    pyngus_compat.install()
    event_map = pyngus_link._Link._endpoint_event_map
    assert (event_map[proton.Event.LINK_REMOTE_DETACH] ==
            event_map[proton.Event.LINK_REMOTE_CLOSE])


@pytest.mark.parametrize('owner, name', [
    (pyngus_link.ReceiverLink, '_process_delivery'),
    (pyngus_link._Link, '_endpoint_event_map'),
])
def test_a_pyngus_with_other_internals_is_refused(monkeypatch, owner, name):
    for cls in owner.__mro__:
        if name in vars(cls):
            monkeypatch.delattr(cls, name)
    monkeypatch.setattr(pyngus_compat, '_installed', False)
    with pytest.raises(RuntimeError) as info:
        pyngus_compat.install()
    text = str(info.value)
    assert name in text
    assert 'Install pyngus>=2.3.0,<3' in text


def test_links_share_sessions_past_the_limit():
    container = pyngus.Container('sessions-test')
    conn = container.create_connection('c')
    try:
        sessions = pyngus_compat.Sessions(conn, limit=2)
        first = sessions.sender('a', 'a', None, 's1')
        second = sessions.receiver('b', 'b', None, 'r1')
        assert sessions.count() == 2
        third = sessions.sender('c', 'c', None, 's2')
        assert sessions.count() == 2

        def session(link):
            return pyngus_compat.pn_link(link).session
        assert session(first) != session(second)
        assert session(third) in (session(first), session(second))
        assert pyngus_compat.link_count(conn) == 3
        with pytest.raises(KeyError):
            sessions.sender('a', 'a', None, 's1')
    finally:
        conn.destroy()
        container.destroy()


def test_sessions_count_the_bytes_proton_holds_for_their_links():
    """Sending's backlog: each session's bytes once, however many links."""
    container = pyngus.Container('sessions-test')
    conn = container.create_connection('c')
    try:
        sessions = pyngus_compat.Sessions(conn, limit=2)
        links = [sessions.sender(n, n, None, n) for n in ('a', 'b', 'c')]
        assert sessions.count() == 2
        assert sessions.outgoing_bytes() == 0
        for link, size in zip(links, (100, 200, 400)):
            pn_link = pyngus_compat.pn_link(link)
            pn_link.delivery(b'tag')
            pn_link.send(b'x' * size)
        assert sessions.outgoing_bytes() == 700
    finally:
        conn.destroy()
        container.destroy()


def test_the_send_backlog_counts_what_the_sessions_hold():
    """Pre-settled senders wait while proton holds bytes in sessions."""
    container = pyngus.Container('backlog-test')
    conn = container.create_connection('c')
    try:
        ctl = types.SimpleNamespace(conn=conn, sessions=None, loop=None,
                                    opts=None)
        sends = sending.Sends(ctl)
        sends.unwritten = 50
        base = conn.has_output + 50
        assert sends.backlog() == base
        ctl.sessions = pyngus_compat.Sessions(conn, limit=2)
        link = ctl.sessions.sender('a', 'a', None, 'a')
        pn_link = pyngus_compat.pn_link(link)
        pn_link.delivery(b'tag')
        pn_link.send(b'x' * (sending.OUTPUT_HIGH_WATER + 1))
        assert sends.backlog() == base + sending.OUTPUT_HIGH_WATER + 1
        assert sends.backlog() > sending.OUTPUT_HIGH_WATER
    finally:
        conn.destroy()
        container.destroy()


def _pump(ta, tb):
    """Move bytes between two in-memory transports until both are idle."""
    for _ in range(50):
        moved = False
        for src, dst in ((ta, tb), (tb, ta)):
            pending = src.pending()
            if pending > 0:
                dst.push(src.peek(pending))
                src.pop(pending)
                moved = True
        if not moved:
            return


def _events_of_a_transfer(read):
    """The events a sender's connection yields for two accepted messages.

    read(collector) gives the (type, link name, delivery tag) of every
    event, through proton's collector or pyngus_compat's filter.
    """
    a, b = proton.Connection(), proton.Connection()
    ta, tb = proton.Transport(), proton.Transport(proton.Transport.SERVER)
    ta.bind(a)
    tb.bind(b)
    collector = proton.Collector()
    a.collect(collector)
    a.open()
    sender = a.session()
    sender.open()
    sender = sender.sender('tx')
    sender.target.address = 'q'
    sender.open()
    b.open()
    _pump(ta, tb)
    ssn = b.session_head(proton.Endpoint.LOCAL_UNINIT)
    ssn.open()
    receiver = b.link_head(proton.Endpoint.LOCAL_UNINIT)
    receiver.open()
    receiver.flow(10)
    _pump(ta, tb)
    for tag in (b'm1', b'm2'):
        sender.delivery(tag)
        sender.send(b'payload')
        sender.advance()
    _pump(ta, tb)
    while receiver.current is not None:
        delivery = receiver.current
        receiver.recv(delivery.pending)
        delivery.update(proton.Delivery.ACCEPTED)
        delivery.settle()
        receiver.advance()
    _pump(ta, tb)
    return read(collector)


def _read(source):
    seen = []
    event = source.peek()
    while event is not None:
        seen.append((str(event.type),
                     event.link.name if event.link else None,
                     event.delivery.tag if event.delivery else None))
        source.pop()
        event = source.peek()
    return seen


def test_the_event_filter_gives_pyngus_what_proton_does_but_transport():
    plain = _events_of_a_transfer(_read)
    filtered = _events_of_a_transfer(
        lambda collector: _read(pyngus_compat.EventFilter(collector)))
    types = [seen[0] for seen in plain]
    # the exchange made every kind the filter treats apart
    assert {'PN_TRANSPORT', 'PN_DELIVERY', 'PN_LINK_FLOW'} <= set(types)
    assert filtered == [seen for seen in plain if seen[0] != 'PN_TRANSPORT']
    deliveries = [seen for seen in filtered if seen[0] == 'PN_DELIVERY']
    assert deliveries and all(link == 'tx' and tag is not None
                              for _, link, tag in deliveries)


def _settled_by_a_receiver(filtered):
    """Send three messages to a pyngus receiver; settle them three ways.

    Returns the bodies the receiver got, the types of the deliveries
    pyngus held, the sender's view of each outcome and what is left
    unsettled.
    """
    with helpers.ReceiverPair(filtered) as pair:
        sent = pair.send([{'n': n} for n in range(3)])
        pair.pump()
        link = pair.link
        kinds = {type(d) for d in link._unsettled_deliveries.values()}
        (_, h0), (_, h1), (_, h2) = pair.handler.received
        link.message_accepted(h0)
        link.message_rejected(h1, proton.Condition('amqp:decode-error',
                                                   'not JSON'))
        link.message_modified(h2, True, True, None)
        pair.pump()
        outcomes = [(d.remote_state, d.remote.condition and
                     d.remote.condition.description,
                     d.remote_state == proton.Delivery.MODIFIED and
                     (d.remote.failed, d.remote.undeliverable))
                    for d in sent]
        return (pair.handler.bodies(), kinds, outcomes,
                dict(link._unsettled_deliveries))


@pytest.mark.parametrize('filtered', [False, True])
def test_a_receiver_gets_and_settles_messages_with_or_without_wrappers(
        filtered):
    bodies, kinds, outcomes, unsettled = _settled_by_a_receiver(filtered)
    assert bodies == [{'n': 0}, {'n': 1}, {'n': 2}]
    raw = pyngus_compat._RawDelivery
    assert kinds == ({raw} if filtered else {proton.Delivery})
    assert outcomes == [
        (proton.Delivery.ACCEPTED, None, False),
        (proton.Delivery.REJECTED, 'not JSON', False),
        (proton.Delivery.MODIFIED, None, (True, True)),
    ]
    assert unsettled == {}


def test_the_event_filter_forgets_freed_receivers():
    with helpers.ReceiverPair(True) as pair:
        collector = pair.conn._pn_collector
        assert [entry[0] for entry in collector._receivers.values()] == [
            pair.link]
        pair.link.destroy()
        second = pair.conn.create_receiver('q', 'q', helpers.Received(),
                                           'rx2')
        pyngus_compat.decode_in_python(second)
        assert [entry[0] for entry in collector._receivers.values()] == [
            second]


def _request(n):
    return codec.encode_request({}, {'n': n}).encode()


def _comparable(info):
    """A send outcome's info with its condition as (name, description)."""
    info = dict(info or {})
    if info.get('condition') is not None:
        info['condition'] = (info['condition'].name,
                             info['condition'].description)
    return info


def _outcomes_of_sends(filtered):
    """Four sends the peer settles four ways, and one pre-settled.

    Returns what the peer received (body, pre-settled), each outcome as
    the send's callback got it, and what the sender link has left.
    """
    with helpers.SenderPair(filtered) as pair:
        outcomes = []
        for n in range(4):
            pyngus_compat.send(
                pair.link, _request(n),
                lambda state, info, n=n: outcomes.append(
                    (n, state, _comparable(info))))
        pyngus_compat.send(pair.link, _request(4))
        pair.pump()
        got = pair.arrived()
        accepted, rejected, released, modified = [d for d, _, _ in got[:4]]
        accepted.update(proton.Delivery.ACCEPTED)
        rejected.local.condition = proton.Condition('amqp:decode-error',
                                                    'not JSON')
        rejected.update(proton.Delivery.REJECTED)
        released.update(proton.Delivery.RELEASED)
        modified.local.failed = True
        modified.local.undeliverable = True
        modified.update(proton.Delivery.MODIFIED)
        for delivery, _, _ in got:
            delivery.settle()
        pair.pump()
        return ([(body, settled) for _, body, settled in got],
                sorted(outcomes), pair.link.pending,
                pyngus_compat.pn_link(pair.link).unsettled)


@pytest.mark.parametrize('filtered', [False, True])
def test_sends_get_the_peers_outcomes_with_or_without_wrappers(filtered):
    received, outcomes, pending, unsettled = _outcomes_of_sends(filtered)
    assert received == [({'n': n}, n == 4) for n in range(5)]
    S = pyngus.SenderLink
    assert outcomes == [
        (0, S.ACCEPTED, {}),
        (1, S.REJECTED, {'condition': ('amqp:decode-error', 'not JSON')}),
        (2, S.RELEASED, {}),
        (3, S.MODIFIED, {'delivery-failed': True,
                         'undeliverable-here': True}),
    ]
    assert (pending, unsettled) == (0, 0)


@pytest.mark.parametrize('filtered', [False, True])
def test_a_sender_hears_of_new_credit_once(filtered):
    with helpers.SenderPair(filtered, credit=1) as pair:
        pair.handler.credit_granted.reset_mock()
        pyngus_compat.send(pair.link, _request(0))
        pair.pump()
        assert pair.link.credit == 0
        pair.arrived()
        pair.handler.credit_granted.assert_not_called()
        pair.receiver.flow(3)
        pair.pump()
        pair.handler.credit_granted.assert_called_once_with(pair.link)
        assert pair.link.credit == 3


@pytest.mark.parametrize('filtered', [False, True])
def test_sends_a_closed_sender_cut_off_are_aborted(filtered):
    with helpers.SenderPair(filtered) as pair:
        # as links.SenderLink does
        pair.handler.sender_closed.side_effect = pyngus_compat.abort_sends
        outcomes = []
        for n in range(2):
            pyngus_compat.send(pair.link, _request(n),
                               lambda state, info: outcomes.append(state))
        pair.pump()
        assert len(pair.arrived()) == 2
        pair.receiver.close()
        pair.pump()
        pair.link.close()
        pair.pump()
        pair.handler.sender_closed.assert_called_once_with(pair.link)
        assert outcomes == [pyngus.SenderLink.ABORTED] * 2


def test_a_closed_sender_aborts_no_freed_links_sends():
    """An address proton reuses: the freed link's sends are not aborted."""
    with helpers.SenderPair(True) as pair:
        pair.handler.sender_closed.side_effect = pyngus_compat.abort_sends
        collector = pair.link._connection._pn_collector
        freed = []
        # what a freed sender left under the address pair.link now has
        collector._senders[pair.link._pn_link._impl] = (
            object(), {'delivery': lambda state, info: freed.append(state)})
        pair.receiver.close()
        pair.pump()
        pair.link.close()
        pair.pump()
        pair.handler.sender_closed.assert_called_once_with(pair.link)
        assert freed == []
