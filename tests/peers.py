#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""In-process AMQP 1.0 intermediaries for the driver's unit tests.

Test fixtures only, never product code.  A :class:`Peer` listens on a local
TCP port and behaves like one of the intermediaries the driver talks to:

* ``kind='router'``: a qdrouterd-like message router.  It stores nothing,
  distributes by address prefix (multicast, closest, balanced), settles end
  to end, assigns addresses to dynamic sources and relays messages sent on
  an anonymous link by their ``to`` property.
* ``kind='broker'``: a qpidd-like broker with the legacy address patterns:
  ``exclusive*`` and ``unicast*`` are queues, ``broadcast*`` are topics,
  anything else is refused with ``amqp:not-found``.

Each peer runs a proton reactor (``proton.reactor.Container``) on its own
daemon thread.  Every proton object is touched on that thread only: the
public methods hand a function over to it (through an ``EventInjector``) and
wait for its result.

SASL: proton's built-in SASL (the wheels carry no Cyrus SASL) cannot check a
PLAIN password on the server side, so when ``users`` is given the peer runs
the SASL exchange itself on the raw socket and only then hands the socket to
a proton transport.
"""

import collections
import functools
import itertools
import logging
import os
import socket
import struct
import threading
import time
import uuid

import proton
from proton import reactor

LOG = logging.getLogger(__name__)

# qdrouterd's ``address {prefix, distribution}`` as DevStack configures it.
ROUTER_DISTRIBUTION = (
    ('openstack.org/om/rpc/multicast', 'multicast'),
    ('openstack.org/om/notify/multicast', 'multicast'),
    ('broadcast', 'multicast'),
    ('openstack.org/om/rpc/unicast', 'closest'),
    ('openstack.org/om/notify/unicast', 'closest'),
    ('unicast', 'closest'),
    ('exclusive', 'closest'),
    ('openstack.org/om/rpc/anycast', 'balanced'),
    ('openstack.org/om/notify/anycast', 'balanced'),
)

# qpidd's queue-patterns / topic-patterns as DevStack configures them.
BROKER_QUEUE_PREFIXES = ('exclusive', 'unicast')
BROKER_TOPIC_PREFIXES = ('broadcast',)

DEFAULT_PRODUCTS = {'router': 'qpid-dispatch-router', 'broker': 'qpid-cpp'}
PRODUCER_CREDIT = 250
CALL_TIMEOUT = 10.0

_OUTCOMES = {
    'accepted': proton.Delivery.ACCEPTED,
    'rejected': proton.Delivery.REJECTED,
    'released': proton.Delivery.RELEASED,
    'modified': proton.Delivery.MODIFIED,
}
_OUTCOME_NAMES = dict((v, k) for k, v in _OUTCOMES.items())

_SASL_HEADER = b'AMQP\x03\x01\x00\x00'
_AMQP_HEADER = b'AMQP\x00\x01\x00\x00'
_SASL_MECHANISMS = 0x40
_SASL_INIT = 0x41
_SASL_OUTCOME = 0x44
_SASL_OK = 0
_SASL_AUTH = 1

_ids = collections.defaultdict(itertools.count)
_ids_lock = threading.Lock()


def _next_id(kind):
    with _ids_lock:
        return next(_ids[kind])


def _guard(cls):
    """Log, don't raise, errors in a handler's on_* methods.

    An exception escaping a handler would end the reactor's thread and
    leave the test hanging on timeouts instead of showing the error.
    """
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args):
            try:
                return method(self, *args)
            except Exception:
                LOG.exception('test peer: %s failed', method.__name__)
        return guarded
    for name, value in list(vars(cls).items()):
        if name.startswith('on_') and callable(value):
            setattr(cls, name, wrap(value))
    return cls


def wait_for(predicate, timeout=5.0, interval=0.01):
    """Poll predicate() until it returns true; return its last truth value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def router_distribution(address):
    """Distribution a qdrouterd configured like DevStack's uses for address.

    The longest matching prefix wins; an address matches a prefix when it
    equals it or continues with '/' or '.'.  Unmatched addresses are
    'balanced' (qdrouterd's default).
    """
    best, dist = -1, 'balanced'
    for prefix, distribution in ROUTER_DISTRIBUTION:
        if address == prefix or (address.startswith(prefix)
                                 and address[len(prefix)] in './'):
            if len(prefix) > best:
                best, dist = len(prefix), distribution
    return dist


def broker_node_type(address):
    """'queue', 'topic' or None (no such node) for a qpidd-like broker."""
    if address.startswith(BROKER_QUEUE_PREFIXES):
        return 'queue'
    if address.startswith(BROKER_TOPIC_PREFIXES):
        return 'topic'
    return None


class _Future(object):
    """Result of a call run on the peer thread."""

    def __init__(self):
        self._event = threading.Event()
        self._result = None
        self._error = None

    def set(self, result=None, error=None):
        self._result, self._error = result, error
        self._event.set()

    def wait(self, timeout):
        if not self._event.wait(timeout):
            raise TimeoutError('peer thread did not answer in %ss' % timeout)
        if self._error is not None:
            raise self._error
        return self._result


class _Inbound(object):
    """The producer's side of one message: where its outcome goes."""

    def __init__(self, delivery=None, presettled=False):
        self.delivery = delivery
        self.presettled = presettled
        self.outcome = None
        self.dead = False       # the producer's link is gone
        self.producer = None    # the producer's _LinkInfo
        self.done = threading.Event()

    def settle(self, outcome, state=None, failed=False):
        """Answer the producer; state is the consumer's disposition."""
        if self.done.is_set():
            return
        self.outcome = outcome
        self.done.set()
        dlv = self.delivery
        if dlv is None or self.presettled or self.dead:
            return
        local = dlv.local
        if outcome == 'rejected' and state is not None:
            local.condition = state.condition
        elif outcome == 'modified':
            if state is not None:
                local.failed = state.failed
                local.undeliverable = state.undeliverable
                if state.annotations:
                    local.annotations = state.annotations
            else:
                local.failed = failed
        dlv.update(_OUTCOMES[outcome])
        dlv.settle()


class _Queue(object):
    """A broker node's store: messages waiting and consumers reading."""

    def __init__(self, name, private=False):
        self.name = name
        self.private = private  # topic subscription or temporary queue
        self.messages = collections.deque()
        self.consumers = []
        self.next = 0


class _ConnInfo(object):

    def __init__(self, connection, selectable):
        self.connection = connection
        self.selectable = selectable
        self.container = None
        self.properties = {}
        self.hostname = None
        self.user = None
        self.links = []


class _LinkInfo(object):

    def __init__(self, link, role, address, conn):
        self.link = link
        self.role = role        # the client's role: 'sender' or 'receiver'
        self.address = address  # None: anonymous relay
        self.conn = conn
        self.tags = itertools.count()
        self.unsettled = {}     # consumer: outgoing delivery -> record
        self.inbound = set()    # producer: deliveries not yet answered
        self.backlog = collections.deque()  # router multicast copies
        self.queue = None       # broker consumer: the _Queue it reads
        self.presettle = link.snd_settle_mode == proton.Link.SND_SETTLED


@_guard
class _SaslServer(proton.Handler):
    """SASL PLAIN server run on the raw socket before proton sees it."""

    def __init__(self, engine, selectable, peer_address):
        self.engine = engine
        self.selectable = selectable
        self.peer_address = peer_address
        self.inbuf = b''
        self.outbuf = b''
        self.state = 'header'   # header, init, ok, failed, done
        self.user = None

    @staticmethod
    def _frame(descriptor, put_fields):
        data = proton.Data()
        data.put_described()
        data.enter()
        data.put_ulong(descriptor)
        data.put_list()
        data.enter()
        put_fields(data)
        data.exit()
        data.exit()
        body = bytes(data.encode())
        return struct.pack('!IBBH', 8 + len(body), 2, 1, 0) + body

    def _mechanisms(self):
        def put(data):
            data.put_array(False, proton.Data.SYMBOL)
            data.enter()
            data.put_symbol('PLAIN')
            data.exit()
        return self._frame(_SASL_MECHANISMS, put)

    def _outcome(self, code):
        return self._frame(_SASL_OUTCOME, lambda data: data.put_ubyte(code))

    def on_selectable_readable(self, event):
        if self.state == 'done':
            return
        try:
            data = self.selectable.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b''
        if not data:
            LOG.debug('SASL: %s went away', self.peer_address)
            self.engine.sasl_finished(self, False)
            return
        self.inbuf += data
        self._process()

    def on_selectable_writable(self, event):
        if self.state != 'done':
            self._flush()

    def _process(self):
        if self.state == 'header' and len(self.inbuf) >= 8:
            header, self.inbuf = self.inbuf[:8], self.inbuf[8:]
            if header != _SASL_HEADER:
                LOG.info('SASL required, %s sent header %r',
                         self.peer_address, header)
                self.outbuf += _SASL_HEADER
                self.state = 'failed'
            else:
                self.outbuf += _SASL_HEADER + self._mechanisms()
                self.state = 'init'
        if self.state == 'init' and len(self.inbuf) >= 8:
            size, doff, ftype = struct.unpack('!IBB', self.inbuf[:6])
            if len(self.inbuf) >= size:
                frame, self.inbuf = self.inbuf[:size], self.inbuf[size:]
                ok = ftype == 1 and self._check_init(frame[doff * 4:])
                self.outbuf += self._outcome(_SASL_OK if ok else _SASL_AUTH)
                self.state = 'ok' if ok else 'failed'
        self._flush()

    def _check_init(self, body):
        data = proton.Data()
        try:
            data.decode(body)
            data.rewind()
            data.next()
            frame = data.get_object()
            if frame.descriptor != _SASL_INIT:
                return False
            mechanism, response = frame.value[0], bytes(frame.value[1] or b'')
        except Exception:
            LOG.exception('SASL: bad sasl-init frame')
            return False
        if mechanism != 'PLAIN':
            LOG.info('SASL: mechanism %s refused', mechanism)
            return False
        parts = response.split(b'\0')
        if len(parts) != 3:
            return False
        user, password = parts[1].decode(), parts[2].decode()
        users = self.engine.peer.users
        if user in users and users[user] == password:
            self.user = user
            return True
        LOG.info('SASL: authentication failed for %r', user)
        return False

    def _flush(self):
        s = self.selectable
        if self.outbuf:
            try:
                sent = s.send(self.outbuf)
                self.outbuf = self.outbuf[sent:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.engine.sasl_finished(self, False)
                return
        if not self.outbuf and self.state in ('ok', 'failed'):
            self.engine.sasl_finished(self, self.state == 'ok')
            return
        want_write = bool(self.outbuf)
        if s.writing != want_write:
            s.writing = want_write
            s.update()


@_guard
class _Later(proton.Handler):
    """Timer task: run fn(*args) on the peer's thread."""

    def __init__(self, fn, *args):
        self.fn = fn
        self.args = args

    def on_timer_task(self, event):
        self.fn(*self.args)


@_guard
class _Listener(proton.Handler):
    """Accepts sockets (the reactor's Acceptor, plus the SASL hook)."""

    def __init__(self, engine, sock):
        self.engine = engine
        self.sock = sock
        self.selectable = None

    def on_selectable_readable(self, event):
        try:
            sock, name = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        sock.setblocking(False)
        self.engine.accepted(sock, name)


@_guard
class _Engine(proton.Handler):
    """Event handler for one run of a peer's container (peer thread only)."""

    def __init__(self, peer, listen_sock):
        self.peer = peer
        self.listen_sock = listen_sock
        self.container = None
        self.thread = None
        self.sockets = set()     # every accepted socket, closed at the end
        self.injector = reactor.EventInjector()
        self.calls = collections.deque()
        self.ready = threading.Event()
        self.listener = None
        self.conns = {}          # proton Connection -> _ConnInfo
        self.sasl = set()        # _SaslServer still negotiating
        self.links = {}          # proton Link -> _LinkInfo
        self.consumers = collections.defaultdict(list)  # router: addr -> [li]
        self.pending = collections.defaultdict(collections.deque)  # router
        self.rr = collections.defaultdict(int)
        self.topics = collections.defaultdict(list)  # broker: addr -> [li]

    # ---- cross-thread calls -------------------------------------------

    def call(self, fn, *args):
        if threading.current_thread() is self.thread:
            return fn(*args)
        future = _Future()
        self.calls.append((fn, args, future))
        self.injector.trigger(reactor.ApplicationEvent('peer_call'))
        return future.wait(CALL_TIMEOUT)

    def on_peer_call(self, event):
        while self.calls:
            fn, args, future = self.calls.popleft()
            try:
                future.set(fn(*args))
            except Exception as exc:
                LOG.exception('%s: call %s failed', self.peer.container_id, fn)
                future.set(error=exc)

    # ---- reactor and sockets ------------------------------------------

    def on_reactor_init(self, event):
        self.container = event.container
        self.container.selectable(self.injector)
        self.listener = _Listener(self, self.listen_sock)
        s = self.container.selectable(handler=self.listener,
                                      delegate=self.listen_sock)
        s.reading = True
        s._transport = None
        self.listener.selectable = s
        self.container.update(s)
        self.ready.set()

    def accepted(self, sock, name):
        self.sockets.add(sock)
        LOG.debug('%s: accepted %s', self.peer.container_id, name)
        s = self.container.selectable(delegate=sock)
        s._transport = None
        if self.peer.users is not None:
            sasl = _SaslServer(self, s, name)
            s.handler = sasl
            s.reading = True
            self.sasl.add(sasl)
            self.container.update(s)
        else:
            self._attach_transport(s, name, b'', None)

    def sasl_finished(self, sasl, ok):
        if sasl not in self.sasl:
            return
        self.sasl.discard(sasl)
        sasl.state = 'done'
        s = sasl.selectable
        if not ok:
            self._close_selectable(s)
            return
        # Not now: the reactor's IOHandler would read this very readable
        # event again from the transport's socket.
        s.reading = s.writing = False
        s.update()
        self.container.schedule(0, _Later(self._hand_over, sasl))

    def _hand_over(self, sasl):
        """Give an authenticated socket to a proton transport."""
        s = sasl.selectable
        if not s.is_terminal:
            self._attach_transport(s, sasl.peer_address, sasl.inbuf,
                                   sasl.user)

    def _attach_transport(self, s, name, data, user):
        conn = self.container.connection(self)
        conn._acceptor = self.listener
        conn.url = proton.Url(host=name[0], port=name[1])
        transport = proton.Transport(proton.Transport.SERVER)
        if self.peer.idle_timeout:
            transport.idle_timeout = self.peer.idle_timeout
        transport.bind(conn)
        info = _ConnInfo(conn, s)
        info.user = user
        self.conns[conn] = info
        s._transport = transport
        transport._selectable = s
        if data:
            transport.push(data)
        s.reading = True
        _update_io(transport, s, self.container.now)

    def _close_selectable(self, s):
        try:
            s._delegate.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        transport = s._transport
        if transport is not None:
            transport.close_tail()
            transport.close_head()
            transport._selectable = None
            s._transport = None
        s.terminate()
        s.update()

    def drop_connections(self):
        for info in list(self.conns.values()):
            self._forget_connection(info.connection)
            self._close_selectable(info.selectable)
        for sasl in list(self.sasl):
            self.sasl.discard(sasl)
            sasl.state = 'done'
            self._close_selectable(sasl.selectable)

    def shutdown(self):
        self.drop_connections()
        if self.listener is not None:
            self.listener.selectable.terminate()
            self.listener.selectable.update()
        self.injector.close()
        self.container.stop()

    # ---- connections and sessions -------------------------------------

    def on_connection_remote_open(self, event):
        conn = event.connection
        if conn.state & proton.Endpoint.LOCAL_ACTIVE:
            return
        info = self.conns.get(conn)
        if info is not None:
            info.container = conn.remote_container
            info.properties = dict(conn.remote_properties or {})
            info.hostname = conn.remote_hostname
        conn.container = self.peer.container_id
        if self.peer.product != '':
            conn.properties = {
                proton.symbol('product'): self.peer.product,
                proton.symbol('version'): self.peer.version,
            }
        conn.offered_capabilities = proton.SymbolList(
            [proton.symbol('ANONYMOUS-RELAY')])
        conn.open()

    def on_connection_remote_close(self, event):
        conn = event.connection
        self._forget_connection(conn)
        if not conn.state & proton.Endpoint.LOCAL_CLOSED:
            conn.close()

    def on_transport_closed(self, event):
        conn = event.connection
        if conn is not None:
            self._forget_connection(conn)

    def on_session_remote_open(self, event):
        session = event.session
        if not session.state & proton.Endpoint.LOCAL_ACTIVE:
            session.open()

    def on_session_remote_close(self, event):
        session = event.session
        for link, li in list(self.links.items()):
            if li.link.session == session:
                self._forget_link(link)
        if not session.state & proton.Endpoint.LOCAL_CLOSED:
            session.close()

    def _forget_connection(self, conn):
        info = self.conns.pop(conn, None)
        if info is None:
            return
        for li in list(info.links):
            self._forget_link(li.link)

    # ---- links --------------------------------------------------------

    def on_link_remote_open(self, event):
        link = event.link
        if link.state & proton.Endpoint.LOCAL_ACTIVE:
            return
        info = self.conns.get(link.connection)
        if info is None:
            return
        if link.is_sender:
            role, terminus = 'receiver', link.remote_source
        else:
            role, terminus = 'sender', link.remote_target
        address, dynamic = terminus.address, terminus.dynamic
        condition = None
        if self.peer.refuse_attach is not None:
            try:
                condition = self.peer.refuse_attach(address, role)
            except Exception:
                LOG.exception('%s: refuse_attach failed',
                              self.peer.container_id)
                condition = 'amqp:internal-error'
        if condition is None:
            condition = self._check_node(address, role, dynamic)
        if condition:
            LOG.debug('%s: refusing %s link to %s: %s',
                      self.peer.container_id, role, address, condition)
            link.open()
            link.condition = proton.Condition(
                condition, 'refused by test peer: %s' % address)
            link.close()
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if dynamic:
            address = self._dynamic_address()
            (link.source if link.is_sender else link.target).address = address
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        link.open()
        li = _LinkInfo(link, role, address, info)
        self.links[link] = li
        info.links.append(li)
        if role == 'sender':
            if self.peer.kind == 'broker' and address is not None and \
                    broker_node_type(address) == 'queue':
                self.peer.queues.setdefault(address, _Queue(address))
            link.flow(PRODUCER_CREDIT)
        elif self.peer.kind == 'router':
            self.consumers[address].append(li)
            self._pump_address(address)
        else:
            self._subscribe(li, dynamic)

    def _check_node(self, address, role, dynamic):
        if dynamic:
            return None if self.peer.dynamic_sources else \
                'amqp:not-implemented'
        if self.peer.kind != 'broker':
            return None
        if address is None and role == 'sender':
            return None     # anonymous relay
        if address is None or broker_node_type(address) is None:
            if address not in self.peer.queues:
                return 'amqp:not-found'
        return None

    def _dynamic_address(self):
        token = uuid.uuid4().hex
        if self.peer.kind == 'router':
            return 'amqp:/_topo/0/%s/temp.%s' % (
                self.peer.container_id, token)
        return 'TempQueue%s' % token

    def on_link_remote_close(self, event):
        link = event.link
        delay = self.peer.detach_delay
        if delay and link.is_sender and link in self.links:
            # still routing to the consumer until the timer fires
            self.container.schedule(delay, _Later(self._close_link, link))
            return
        self._close_link(link)

    def _close_link(self, link):
        self._forget_link(link)
        if not link.state & proton.Endpoint.LOCAL_CLOSED:
            link.close()

    def on_link_remote_detach(self, event):
        link = event.link
        self._forget_link(link)
        if not link.state & proton.Endpoint.LOCAL_CLOSED:
            link.detach()

    def _forget_link(self, link):
        li = self.links.pop(link, None)
        if li is None:
            return
        if li in li.conn.links:
            li.conn.links.remove(li)
        for inbound in li.inbound:
            inbound.dead = True
        li.inbound.clear()
        if li.role == 'sender':
            return
        if self.peer.kind == 'router':
            self._router_drop_consumer(li)
        else:
            self._broker_drop_consumer(li)

    def on_link_flow(self, event):
        link = event.link
        li = self.links.get(link)
        if li is None or not link.is_sender:
            return
        if self.peer.kind == 'router':
            self._pump_link(li)
            self._pump_address(li.address)
        else:
            self._pump_queue(li.queue)
        self._drained(li)

    def _drained(self, li):
        link = li.link
        if link.drain_mode and link.credit > 0:
            link.drained()

    # ---- deliveries ---------------------------------------------------

    def on_delivery(self, event):
        dlv = event.delivery
        link = event.link
        li = self.links.get(link)
        if link.is_receiver:
            if dlv.partial:
                return
            body = link.recv(dlv.pending)
            link.advance()
            if li is None:
                dlv.settle()
                return
            self._incoming(li, dlv, body)
            if link.credit < PRODUCER_CREDIT // 2:
                link.flow(PRODUCER_CREDIT - link.credit)
        elif li is not None and dlv in li.unsettled:
            state = dlv.remote_state
            outcome = _OUTCOME_NAMES.get(state)
            if outcome is None:
                if not dlv.settled:
                    return      # not a terminal outcome yet
                outcome = 'accepted'
            record = li.unsettled.pop(dlv)
            dlv.settle()
            self._consumer_outcome(li, record, outcome, dlv.remote)

    def _incoming(self, li, dlv, body):
        message = proton.Message()
        message.decode(body)
        presettled = dlv.settled
        address = li.address if li.address is not None else message.address
        self.peer.received.append((address, message, presettled))
        inbound = _Inbound(dlv, presettled)
        if not presettled:
            li.inbound.add(inbound)
        self._route(address, message, body, inbound)
        if inbound.done.is_set():
            li.inbound.discard(inbound)
        else:
            inbound.producer = li

    def _route(self, address, message, body, inbound):
        peer = self.peer
        override = None
        if peer.outcome_override is not None:
            try:
                override = peer.outcome_override(address, message)
            except Exception:
                LOG.exception('%s: outcome_override failed',
                              peer.container_id)
                override = 'rejected'
        if isinstance(override, tuple):
            inbound.settle(override[0], failed=override[1])
            return
        if override is not None:
            inbound.settle(override)
            return
        if peer.release_all and not inbound.presettled:
            inbound.settle('released')
            return
        if address is None:
            LOG.info('%s: anonymous message without "to"', peer.container_id)
            inbound.settle('rejected')
            return
        if peer.kind == 'router':
            self._router_route(address, body, inbound)
        else:
            self._broker_route(address, body, inbound)

    def _send(self, li, body, record):
        """Send body on a consumer link; record gets the outcome."""
        link = li.link
        dlv = link.delivery(b'%d' % next(li.tags))
        link.send(body)
        link.advance()
        if li.presettle or record is None:
            dlv.settle()
            if record is not None:
                self._consumer_outcome(li, record, 'accepted', None)
        else:
            li.unsettled[dlv] = record

    def _consumer_outcome(self, li, record, outcome, state):
        if self.peer.kind == 'router':
            record.settle(outcome, state)
            self._unlink_inbound(record)
        else:
            queue, body = record
            if outcome in ('released', 'modified'):
                queue.messages.appendleft(body)
                self._pump_queue(queue)

    def _unlink_inbound(self, inbound):
        producer = inbound.producer
        if producer is not None:
            producer.inbound.discard(inbound)

    # ---- router -------------------------------------------------------

    def _router_route(self, address, body, inbound):
        consumers = self.consumers.get(address)
        if not consumers:
            inbound.settle('released')
            return
        if inbound.presettled and self.peer.drop_presettled and \
                not any(li.link.credit > 0 for li in consumers):
            self.peer.dropped += 1
            return
        if router_distribution(address) == 'multicast':
            for li in consumers:
                li.backlog.append(body)
                self._pump_link(li)
            inbound.settle('accepted')
            return
        self.pending[address].append((body, inbound))
        self._pump_address(address)

    def _pump_link(self, li):
        while li.backlog and li.link.credit > 0:
            self._send(li, li.backlog.popleft(), None)

    def _pump_address(self, address):
        pending = self.pending.get(address)
        consumers = self.consumers.get(address)
        while pending and consumers:
            ready = [li for li in consumers if li.link.credit > 0]
            if not ready:
                break
            li = ready[self.rr[address] % len(ready)]
            self.rr[address] += 1
            body, inbound = pending.popleft()
            if inbound.done.is_set():
                continue
            self._send(li, body, inbound)
        if not pending:
            self.pending.pop(address, None)

    def _router_drop_consumer(self, li):
        consumers = self.consumers.get(li.address, [])
        if li in consumers:
            consumers.remove(li)
        if not consumers:
            self.consumers.pop(li.address, None)
        for record in li.unsettled.values():
            # delivered but never settled: the consumer may have seen it
            record.settle('modified', failed=True)
            self._unlink_inbound(record)
        li.unsettled.clear()
        if not consumers:
            for body, inbound in self.pending.pop(li.address, ()):
                inbound.settle('released')
                self._unlink_inbound(inbound)
        else:
            self._pump_address(li.address)

    # ---- broker -------------------------------------------------------

    def _broker_route(self, address, body, inbound):
        queues = self.peer.queues
        if address in queues:
            queue = queues[address]     # a queue or a temporary queue
        else:
            node = broker_node_type(address)
            if node == 'topic':
                for li in self.topics.get(address, ()):
                    li.queue.messages.append(body)
                    self._pump_queue(li.queue)
                inbound.settle('accepted')
                return
            if node is None:
                inbound.settle('rejected', _NotFound(address))
                return
            queue = queues[address] = _Queue(address)
        queue.messages.append(body)
        inbound.settle('accepted')
        self._pump_queue(queue)

    def _subscribe(self, li, dynamic):
        queues = self.peer.queues
        address = li.address
        if dynamic:
            queue = queues[address] = _Queue(address, private=True)
        elif broker_node_type(address) == 'topic':
            queue = _Queue(address, private=True)
            self.topics[address].append(li)
        else:
            queue = queues.get(address)
            if queue is None:
                queue = queues[address] = _Queue(address)
        li.queue = queue
        queue.consumers.append(li)
        self._pump_queue(queue)

    def _pump_queue(self, queue):
        if queue is None:
            return
        while queue.messages and queue.consumers:
            ready = [li for li in queue.consumers if li.link.credit > 0]
            if not ready:
                break
            li = ready[queue.next % len(ready)]
            queue.next += 1
            body = queue.messages.popleft()
            self._send(li, body, (queue, body))
        for li in queue.consumers:
            self._drained(li)

    def _broker_drop_consumer(self, li):
        queue = li.queue
        if queue is None:
            return
        if li in queue.consumers:
            queue.consumers.remove(li)
        subscribers = self.topics.get(li.address)
        if subscribers is not None and li in subscribers:
            subscribers.remove(li)
            if not subscribers:
                del self.topics[li.address]
        for _queue, body in reversed(list(li.unsettled.values())):
            queue.messages.appendleft(body)
        li.unsettled.clear()
        if queue.private:
            if self.peer.queues.get(queue.name) is queue:
                del self.peer.queues[queue.name]
        else:
            self._pump_queue(queue)

    # ---- snapshots (peer thread) --------------------------------------

    def snapshot_links(self):
        return [(li.role, li.address, li.link.name, li.conn.container)
                for li in self.links.values()]

    def snapshot_connections(self):
        return [{'container_id': info.container,
                 'properties': dict(info.properties),
                 'hostname': info.hostname,
                 'user': info.user}
                for info in self.conns.values()
                if info.container is not None]

    def inject(self, address, message, settled):
        inbound = _Inbound(None, settled)
        self._route(address, message, message.encode(), inbound)
        return inbound


class _NotFound(object):
    """A disposition-like object carrying an amqp:not-found condition."""

    def __init__(self, address):
        self.condition = proton.Condition('amqp:not-found',
                                          'no such node: %s' % address)


def _update_io(transport, s, now):
    """Recompute a socket selectable's interest from its transport."""
    try:
        s.reading = transport.capacity() > 0
        s.writing = transport.pending() > 0
    except proton.ProtonException:
        if transport.closed:
            s.terminate()
            s._transport = None
            transport._selectable = None
    s.deadline = transport.tick(now)
    s.update()


class Peer(object):
    """An in-process AMQP 1.0 router or broker for tests.

    :param kind: 'router' (qdrouterd-like) or 'broker' (qpidd-like).
    :param product: the Open frame's 'product' property; None picks
        'qpid-dispatch-router' or 'qpid-cpp'; '' sends no properties at all.
    :param users: dict user -> password: require SASL PLAIN with these
        credentials; None allows ANONYMOUS (proton's own SASL server).
    :param idle_timeout: the peer's own idle timeout in seconds (0: none);
        the client's idle timeout is always honoured with heartbeats.

    Attributes tests may set at any time:

    * ``refuse_attach(address, role) -> condition or None``: refuse an
      attach (role is the client's, 'sender' or 'receiver'; address is None
      for a dynamic source or an anonymous sender).
    * ``release_all``: answer every unsettled incoming message 'released'
      without forwarding it (pre-settled ones are routed as usual).
    * ``outcome_override(address, message) -> None or outcome``: when not
      None, the message is answered with that outcome and not forwarded;
      ``('modified', True)`` is modified with delivery-failed.
    * ``detach_delay``: seconds a consumer's detach waits for its answer;
      until then messages are still routed to that consumer.
    * ``drop_presettled``: a router drops a pre-settled message that finds
      no consumer with credit (qdrouterd's "psdrop"); ``dropped`` counts
      them.

    Outcomes seen by producers: the consumer's own (router, end to end);
    'released' when nobody consumes the address (router) or the message was
    only queued when the last consumer left; 'modified' with delivery-failed
    when the consumer went away holding the message unsettled (qdrouterd
    does the same); 'accepted' once stored (broker); 'rejected' with
    amqp:not-found for an unknown node reached through the anonymous relay
    (broker).  The callbacks run on the peer's thread (the peer's own
    methods, called from there, run directly).
    """

    def __init__(self, kind='router', product=None, version='1.0.0',
                 host='127.0.0.1', port=0, dynamic_sources=True, users=None,
                 container_id=None, idle_timeout=0):
        if kind not in ('router', 'broker'):
            raise ValueError('kind must be router or broker: %r' % kind)
        self.kind = kind
        if product is None:
            product = DEFAULT_PRODUCTS[kind]
        self.product = product
        self.version = version
        self.host = host
        self.port = port
        self.dynamic_sources = dynamic_sources
        self.users = users
        self.idle_timeout = idle_timeout
        self.container_id = container_id or '%s-%d' % (kind, _next_id(kind))
        self.received = []
        self.queues = {}         # broker: name -> _Queue, survives restart
        self.refuse_attach = None
        self.release_all = False
        self.outcome_override = None
        self.detach_delay = 0
        self.drop_presettled = False
        self.dropped = 0
        self._engine = None
        self._thread = None
        self._sock = None

    wait_for = staticmethod(wait_for)

    @property
    def url(self):
        return 'amqp://%s:%d' % (self.host, self.port)

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def start(self):
        """Listen (port 0 picks a free one); return once accepting."""
        if self.running:
            return self
        sock = self._listen()
        self.port = sock.getsockname()[1]
        self._sock = sock
        engine = _Engine(self, sock)
        container = reactor.Container(engine)
        container.container_id = self.container_id
        self._engine = engine
        self._thread = threading.Thread(target=self._run,
                                        args=(container,),
                                        name='peer-%s' % self.container_id,
                                        daemon=True)
        engine.thread = self._thread
        self._thread.start()
        if not engine.ready.wait(CALL_TIMEOUT):
            raise RuntimeError('%s did not start' % self.container_id)
        LOG.debug('%s listening on %s', self.container_id, self.url)
        return self

    def _listen(self):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
        sock.setblocking(False)
        sock.bind((self.host, self.port))
        sock.listen(64)
        return sock

    def _run(self, container):
        try:
            container.run()
        except Exception:
            LOG.exception('%s: reactor failed', self.container_id)
        finally:
            self._engine.ready.set()

    def stop(self):
        """Close every socket abruptly and stop listening."""
        if self._thread is None:
            return
        engine = self._engine
        try:
            if self._thread.is_alive():
                engine.call(engine.shutdown)
        finally:
            self._thread.join(CALL_TIMEOUT)
            alive, self._thread = self._thread.is_alive(), None
        if alive:
            LOG.error('%s: reactor thread did not stop', self.container_id)
        else:
            # what the reactor leaves open: its injector's pipe, and any
            # socket if it died
            for sock in [self._sock] + list(engine.sockets):
                sock.close()
            for fd in engine.injector.pipe:
                try:
                    os.close(fd)
                except OSError:
                    pass
        LOG.debug('%s stopped', self.container_id)

    def restart(self):
        """Stop, then listen again on the same port.

        A router comes back empty; a broker keeps its queues and messages.
        """
        self.stop()
        for queue in list(self.queues.values()):
            queue.consumers = []
            if queue.private:
                del self.queues[queue.name]
        return self.start()

    def drop_connections(self):
        """Abruptly close every client socket; keep listening."""
        self._call(self._engine.drop_connections)

    def links(self):
        """Open links: (client role, address, link name, client container)."""
        return self._call(self._engine.snapshot_links)

    def connections(self):
        """Open connections: container_id, properties, hostname, user."""
        return self._call(self._engine.snapshot_connections)

    def inject(self, address, message, settled=False, timeout=5.0):
        """Deliver message to address as if a producer had sent it.

        Returns the outcome name once known (waits up to timeout), or None
        for a settled message or when no outcome came in time.
        """
        inbound = self._call(self._engine.inject, address, message, settled)
        if settled:
            return None
        inbound.done.wait(timeout)
        return inbound.outcome

    def queue_depth(self, address):
        """Broker: number of messages stored in queue address (0 if none)."""
        def depth():
            queue = self.queues.get(address)
            return len(queue.messages) if queue is not None else 0
        if self.running:
            return self._call(depth)
        return depth()

    def _call(self, fn, *args):
        if not self.running:
            raise RuntimeError('%s is not running' % self.container_id)
        return self._engine.call(fn, *args)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return '<Peer %s %s %s>' % (self.kind, self.container_id, self.url)
