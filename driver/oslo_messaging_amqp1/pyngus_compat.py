# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Every use of pyngus's private names, in one place, checked once.

pyngus 2.x has no public way to do six things the driver needs:

* decode a delivery with :func:`codec.decode_message` instead of proton's
  Message (:func:`decode_in_python`);
* reach a link's proton link, for its session's output backlog and link
  properties (:func:`pn_link`);
* put a receiver on a sender's session (:func:`receiver_on_session_of`),
  which RabbitMQ's management link pair needs;
* share sessions between links (:class:`Sessions`): pyngus opens a session
  per link, and RabbitMQ 4 accepts 64 sessions on a connection;
* read proton's events more cheaply than through ``proton.Event``, hand
  a receiver its deliveries and send on a sender without proton's Python
  wrappers (:class:`EventFilter`, on the connection's ``_pn_collector``;
  :func:`send`);
* learn that the peer answered a detach without ``closed=true``: pyngus
  ignores proton's ``LINK_REMOTE_DETACH`` event, so a RabbitMQ 3.x answer
  to our close never reaches ``receiver_closed`` (every server stop would
  wait out its timer) and a link the peer detaches stays "active" forever.
  :func:`install` makes pyngus treat that detach as a close: the driver
  never resumes links, so for it the two mean the same.

:func:`missing_internals` lists what of this a pyngus lacks;
:func:`install` refuses such a pyngus with the fix in the message.
"""

import itertools
import uuid

import proton
import pyngus
from pyngus import link as pyngus_link

from oslo_messaging_amqp1 import codec

# what the functions below read or replace on pyngus's objects
RECEIVER_INTERNALS = ('_pn_link', '_handler', '_unsettled_deliveries',
                      '_callback_lock', '_process_delivery', '_connection')
SENDER_INTERNALS = ('_pn_link', '_connection', '_handler', '_rejected',
                    '_next_tag', '_last_credit', '_callback_lock')
CONNECTION_INTERNALS = ('_receiver_links', '_sender_links', '_pn_collector')
SESSION_INTERNALS = ('_links', '_pn_session', 'new_sender', 'new_receiver',
                     'open')
_SUPPORTED = 'pyngus>=2.3.0,<3'

_installed = False


def missing_internals() -> list:
    """The private names this module uses that this pyngus lacks."""
    missing = []
    event_map = getattr(getattr(pyngus_link, '_Link', None),
                        '_endpoint_event_map', None)
    if not isinstance(event_map, dict) or \
            proton.Event.LINK_REMOTE_CLOSE not in event_map:
        missing.append('pyngus.link._Link._endpoint_event_map')
    container = pyngus.Container('pyngus-compat-check')
    try:
        conn = container.create_connection('check')
        missing += ['Connection.%s' % name for name in CONNECTION_INTERNALS
                    if not hasattr(conn, name)]
        sender = conn.create_sender('check', name='s')
        receiver = conn.create_receiver('check', name='r')
        for link, names in ((sender, SENDER_INTERNALS),
                            (receiver, RECEIVER_INTERNALS)):
            missing += ['%s.%s' % (type(link).__name__, name)
                        for name in names if not hasattr(link, name)]
        session = getattr(getattr(sender, '_pn_link', None), 'session', None)
        proxy = getattr(session, 'context', None)
        missing += ['session proxy .%s' % name for name in SESSION_INTERNALS
                    if not hasattr(proxy, name)]
        if not isinstance(getattr(pyngus_link, '_SessionProxy', None), type):
            missing.append('pyngus.link._SessionProxy')
        conn.destroy()
    finally:
        container.destroy()
    return missing


def install() -> None:
    """Check this pyngus once; make a remote detach count as a close.

    Raises RuntimeError naming the fix when pyngus's internals differ.
    """
    global _installed
    if _installed:
        return
    missing = missing_internals()
    if missing:
        raise RuntimeError(
            'pyngus %s is not supported by the AMQP 1.0 driver: it lacks %s. '
            'Install %s.' % ('.'.join(map(str, pyngus.VERSION)),
                             ', '.join(missing), _SUPPORTED))
    event_map = pyngus_link._Link._endpoint_event_map
    event_map.setdefault(proton.Event.LINK_REMOTE_DETACH,
                         event_map[proton.Event.LINK_REMOTE_CLOSE])
    _installed = True


def pn_link(link):
    """The proton link under a pyngus link (None once it is freed)."""
    return getattr(link, '_pn_link', None)


def link_count(conn) -> int:
    """Sender and receiver links pyngus holds open on a connection."""
    return len(conn._sender_links) + len(conn._receiver_links)


class Sessions:
    """The sessions of one pyngus connection, shared by its links.

    A link gets a session of its own while the connection has fewer than
    ``limit``; past that it joins the session with the fewest links. So a
    process with a few links keeps pyngus's one session per link (a peer
    that ends a session takes one link with it), and one with hundreds
    stays within RabbitMQ 4's 64 sessions per connection (its
    ``channel-max`` is 63; the management link pair takes one more).
    """

    def __init__(self, connection, limit: int = 32) -> None:
        self.connection = connection
        self.limit = limit
        self._sessions = []

    def _pick(self):
        # pyngus frees a session with its last link (_pn_session None)
        live = [s for s in self._sessions if s._pn_session is not None]
        self._sessions = live
        if len(live) < self.limit:
            session = pyngus_link._SessionProxy(
                'session-%s' % uuid.uuid4().hex, self.connection)
            session.open()
            live.append(session)
            return session
        return min(live, key=lambda s: len(s._links))

    def count(self) -> int:
        """Sessions open now."""
        return sum(1 for s in self._sessions if s._pn_session is not None)

    def outgoing_bytes(self) -> int:
        """Bytes proton holds in these sessions beyond the peer's window."""
        total = 0
        for session in self._sessions:
            pn_session = session._pn_session
            if pn_session is not None:
                total += pn_session.outgoing_bytes
        return total

    def sender(self, source, target, handler, name, properties=None):
        """A sender link, as Connection.create_sender makes it."""
        return self._link(self.connection._sender_links, 'new_sender',
                          target, source, handler, name, properties)

    def receiver(self, target, source, handler, name, properties=None):
        """A receiver link, as Connection.create_receiver makes it."""
        return self._link(self.connection._receiver_links, 'new_receiver',
                          target, source, handler, name, properties)

    def _link(self, links, factory, target, source, handler, name,
              properties):
        if name in links:
            raise KeyError('link %s exists' % name)
        link = getattr(self._pick(), factory)(name)
        link.configure(target, source, handler, properties)
        links[name] = link
        return link


def receiver_on_session_of(connection, sender, name, source, handler,
                           properties=None):
    """A receiver on the sender's session (pyngus gives each its own)."""
    session = sender._pn_link.session.context
    receiver = session.new_receiver(name)
    receiver.configure('', source, handler, properties)
    connection._receiver_links[name] = receiver
    return receiver


def decode_in_python(link) -> None:
    """Have a receiver hand its messages over as codec decodes them.

    pyngus decodes every delivery with proton's Message; this replaces the
    link's delivery step with one that uses :func:`codec.decode_message`,
    keeping pyngus's handles and callbacks. Where the connection's events
    pass an :class:`EventFilter`, the filter does that step itself, on
    proton's C objects (:meth:`EventFilter.receive_raw`).
    """
    handles = itertools.count()

    def process_delivery(pn_delivery):
        if not pn_delivery.readable or pn_delivery.partial:
            return
        pn = link._pn_link
        message = codec.decode_message(pn.recv(pn_delivery.pending))
        pn.advance()
        _hand_over(link, handles, pn_delivery, message)
    link._process_delivery = process_delivery
    collector = getattr(link._connection, '_pn_collector', None)
    if isinstance(collector, EventFilter):
        collector.receive_raw(link, handles)


def _hand_over(link, handles, delivery, message) -> None:
    """Give a received message to link's handler, as pyngus would."""
    handler = link._handler
    if handler is None:
        delivery.settle()
        return
    handle = next(handles)
    link._unsettled_deliveries[handle] = delivery
    with link._callback_lock:
        handler.message_received(link, message, handle)


try:
    # the cffi binding of proton 0.39 and later: the filter uses it raw
    import cproton as _cproton
    _RAW = all(hasattr(_cproton, name) for name in (
        'isnull', 'pn_collector_peek', 'pn_collector_pop', 'pn_event_type',
        'pn_event_link', 'pn_event_delivery'))
except ImportError:  # pragma: no cover - proton without cproton
    _RAW = False
_TRANSPORT = proton.Event.TRANSPORT.number
_DELIVERY = proton.Event.DELIVERY.number
_LINK_FLOW = proton.Event.LINK_FLOW.number
_OUTCOMES = {proton.Disposition.ACCEPTED: pyngus.SenderLink.ACCEPTED,
             proton.Disposition.REJECTED: pyngus.SenderLink.REJECTED,
             proton.Disposition.RELEASED: pyngus.SenderLink.RELEASED,
             proton.Disposition.MODIFIED: pyngus.SenderLink.MODIFIED}
_LINK_EVENTS = {etype.number: etype
                for etype in (proton.Event.DELIVERY, proton.Event.LINK_FLOW)}


class _LinkEvent:
    """What pyngus reads of a delivery or link-flow event, and no more."""

    __slots__ = ('type', 'link', 'delivery')

    def __init__(self, etype, link, delivery) -> None:
        self.type = etype
        self.link = link
        self.delivery = delivery


class EventFilter:
    """A connection's proton collector, as pyngus reads it, made cheaper.

    proton's ``Event`` wraps the delivery, link, session, connection and
    transport of every event, each through cffi. pyngus ignores
    ``PN_TRANSPORT`` (about one per frame written) and reads only the
    type, link and delivery of ``DELIVERY`` and ``LINK_FLOW`` events, the
    ones every message brings: those skip the wrapping here; any other
    event is proton's own. Measured on 4 green callers (RabbitMQ 3.10):
    pyngus's ``process`` went from 110 to 74 us per call in the client,
    and calls/s rose 9 % (3 alternating runs, ``tools/bench --eventlet``).

    The links the driver registers skip pyngus altogether: a receiver's
    deliveries (:meth:`receive_raw`), and a sender's writes, outcomes and
    credit (:meth:`send_raw`). The latter, on 4 green callers (RabbitMQ
    4.0.5, 3 alternating runs, 100 B and 3 KB): CPU per call 0.45-0.52
    -> 0.39-0.46 ms in the client, 0.52-0.61 -> 0.49-0.57 in the server;
    calls/s 859-949 -> 903-995.
    """

    def __init__(self, collector) -> None:
        self._collector = collector
        self._impl = collector._impl
        self._receivers = {}   # proton link -> (pyngus receiver, handles)
        # proton link -> (pyngus sender, {proton delivery: on_outcome})
        self._senders = {}

    def receive_raw(self, link, handles) -> None:
        """Deliver link's messages here, never as events to pyngus.

        What :func:`decode_in_python` does, without wrapping the link and
        the delivery of each message in proton's Python objects. Measured
        on a server taking casts from RabbitMQ 3.10 (3 alternating
        ``tools/bench`` runs each): CPU per message 0.171-0.194 ->
        0.132-0.138 ms at 100 B, 0.181-0.204 -> 0.139-0.201 ms at 3 KB.
        """
        self._register(self._receivers, link, handles)

    @staticmethod
    def _alive(raw_link, link) -> bool:
        # pyngus drops its proton link when it frees it: the address may
        # then come back as another link
        pn = link._pn_link
        return pn is not None and pn._impl == raw_link

    def _register(self, table, link, state) -> tuple:
        """Enter (link, state) in table, by link's proton link.

        Drops the links pyngus freed since; returns the new entry.
        """
        for raw_link in [pn for pn, entry in table.items()
                         if not self._alive(pn, entry[0])]:
            del table[raw_link]
        entry = table[link._pn_link._impl] = (link, state)
        return entry

    def _live(self, table, raw_link):
        """table's (link, state) for raw_link; None if none or freed."""
        entry = table.get(raw_link)
        if entry is not None and not self._alive(raw_link, entry[0]):
            del table[raw_link]
            return None
        return entry

    def _receive(self, raw_link, raw) -> bool:
        """Deliver a delivery event of a raw receiver (False: not one)."""
        entry = self._live(self._receivers, raw_link)
        if entry is None:
            return False
        link, handles = entry
        if _cproton.pn_delivery_readable(raw) and \
                not _cproton.pn_delivery_partial(raw):
            _, data = _cproton.pn_link_recv(
                raw_link, _cproton.pn_delivery_pending(raw))
            message = codec.decode_message(data)
            _cproton.pn_link_advance(raw_link)
            _hand_over(link, handles, _RawDelivery(raw), message)
        return True

    def send_raw(self, link, data: bytes, on_outcome) -> None:
        """What :func:`send` does, on proton's C objects.

        The delivery is keyed by its proton pointer until the peer settles
        it (:meth:`_sent`); credit comes to the link's handler as pyngus
        would give it (:meth:`_flow`). Nothing of this passes pyngus's
        send queue, so ``link.pending`` stays 0: the caller counts.
        """
        raw_link = link._pn_link._impl
        entry = self._senders.get(raw_link)
        if entry is None or entry[0] is not link:
            entry = self._register(self._senders, link, {})
        tag = link._next_tag
        link._next_tag = tag + 1
        raw = _cproton.pn_delivery(raw_link, b'%x' % tag)
        _cproton.pn_link_send(raw_link, data)
        _cproton.pn_link_advance(raw_link)
        link._last_credit = _cproton.pn_link_credit(raw_link)
        if on_outcome is None:
            _cproton.pn_delivery_settle(raw)
        else:
            entry[1][raw] = on_outcome

    def _sent(self, raw_link, raw) -> bool:
        """Report the outcome of a raw send (False: not a raw sender's)."""
        entry = self._live(self._senders, raw_link)
        if entry is None:
            return False
        state = _cproton.pn_delivery_remote_state(raw)
        if not state and not _cproton.pn_delivery_settled(raw):
            return True     # not final yet
        link, sends = entry
        on_outcome = sends.pop(raw, None)
        if on_outcome is not None:
            outcome = _OUTCOMES.get(state, pyngus.SenderLink.UNKNOWN)
            with link._callback_lock:
                on_outcome(outcome, _outcome_info(raw, outcome))
        _cproton.pn_delivery_settle(raw)
        return True

    def _flow(self, raw_link) -> bool:
        """Credit for a raw sender, as pyngus's ``_process_credit``."""
        entry = self._live(self._senders, raw_link)
        if entry is None:
            return False
        link = entry[0]
        credit = _cproton.pn_link_credit(raw_link)
        if link._handler is not None and not link._rejected and \
                0 < credit > link._last_credit:
            with link._callback_lock:
                link._handler.credit_granted(link)
            credit = _cproton.pn_link_credit(raw_link)
        link._last_credit = credit
        return True

    def abort_sends(self, link) -> list:
        """Forget a closed raw sender; the outcomes it never got."""
        raw_link = getattr(link._pn_link, '_impl', None)
        entry = self._senders.get(raw_link)
        if entry is None or entry[0] is not link:
            # no raw send on link; an entry under its address is a freed
            # link's, whose sends are not link's to abort
            return []
        del self._senders[raw_link]
        return list(entry[1].values())

    def _raw(self, number, raw) -> bool:
        """Handle a raw link's event here (False: pyngus handles it)."""
        if number == _DELIVERY:
            link = _cproton.pn_event_link(raw)
            delivery = _cproton.pn_event_delivery(raw)
            return bool(self._receivers and
                        self._receive(link, delivery) or
                        self._senders and self._sent(link, delivery))
        return bool(number == _LINK_FLOW and self._senders and
                    self._flow(_cproton.pn_event_link(raw)))

    def peek(self):
        """The next event pyngus handles (None when none is left)."""
        impl = self._impl
        while True:
            raw = _cproton.pn_collector_peek(impl)
            if _cproton.isnull(raw):
                return None
            number = _cproton.pn_event_type(raw)
            if number == _TRANSPORT or self._raw(number, raw):
                _cproton.pn_collector_pop(impl)
                continue
            etype = _LINK_EVENTS.get(number)
            if etype is not None:
                return _LinkEvent(
                    etype, proton.Link.wrap(_cproton.pn_event_link(raw)),
                    proton.Delivery.wrap(_cproton.pn_event_delivery(raw)))
            return proton.Event.wrap(raw)

    def pop(self) -> None:
        _cproton.pn_collector_pop(self._impl)

    def __getattr__(self, name):
        return getattr(self._collector, name)


def _outcome_info(raw, outcome) -> dict:
    """What pyngus tells a send callback beside a refusal's outcome."""
    if outcome == pyngus.SenderLink.REJECTED:
        condition = proton.Delivery.wrap(raw).remote.condition
        return {'condition': condition} if condition else {}
    if outcome == pyngus.SenderLink.MODIFIED:
        remote = proton.Delivery.wrap(raw).remote
        info = {'delivery-failed': remote.failed,
                'undeliverable-here': remote.undeliverable}
        if remote.annotations:
            info['message-annotations'] = remote.annotations
        return info
    return {}


class _Encoded:
    """Bytes as pyngus's ``SenderLink.send`` takes a message."""

    __slots__ = ('data',)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def encode(self) -> bytes:
        return self.data


def send(link, data: bytes, on_outcome=None) -> None:
    """Write data, an encoded message, as one delivery on pyngus link.

    ``on_outcome(state, info)`` gets the peer's outcome as pyngus states
    it (``pyngus.SenderLink.ACCEPTED`` ...); without it the delivery goes
    pre-settled. Where the connection's events pass an
    :class:`EventFilter`, proton's C objects do it
    (:meth:`EventFilter.send_raw`); else pyngus's ``SenderLink.send``.
    The link must have credit.
    """
    collector = link._connection._pn_collector
    if isinstance(collector, EventFilter):
        collector.send_raw(link, data, on_outcome)
    elif on_outcome is None:
        link.send(_Encoded(data))
    else:
        link.send(_Encoded(data),
                  lambda _link, _handle, state, info: on_outcome(state, info))


def abort_sends(link) -> None:
    """Tell the sends a closed sender link cut off that they are aborted.

    pyngus does so for the sends it made before ``sender_closed``; this
    does it for the raw ones (:func:`send`), with the same state and info.
    """
    collector = getattr(link._connection, '_pn_collector', None)
    if not isinstance(collector, EventFilter):
        return
    condition = link._pn_link.condition
    info = {'condition': condition} if condition else None
    for on_outcome in collector.abort_sends(link):
        on_outcome(pyngus.SenderLink.ABORTED, info)


class _RawDelivery:
    """A received delivery as pyngus settles it, with no proton wrapper.

    pyngus calls ``update(state)`` and ``settle()``; a rejection or a
    modification also sets ``local``, which wraps the delivery then.
    Holds a reference on proton's delivery, as the wrapper would.
    """

    __slots__ = ('_impl', '_wrapper')

    def __init__(self, impl) -> None:
        _cproton.pn_incref(impl)
        self._impl = impl
        self._wrapper = None

    def __del__(self) -> None:
        _cproton.pn_decref(self._impl)

    @property
    def local(self):
        if self._wrapper is None:
            self._wrapper = proton.Delivery.wrap(self._impl)
        return self._wrapper.local

    def update(self, state) -> None:
        if self._wrapper is not None:
            self._wrapper.update(state)   # with what was set on local
        else:
            _cproton.pn_delivery_update(self._impl, state)

    def settle(self) -> None:
        _cproton.pn_delivery_settle(self._impl)


def filter_events(conn) -> None:
    """Have pyngus read conn's events through an :class:`EventFilter`.

    Only with proton's cffi binding (0.39 and later); an older proton's
    collector is left as it is.
    """
    collector = conn._pn_collector
    if _RAW and hasattr(collector, '_impl'):
        conn._pn_collector = EventFilter(collector)
