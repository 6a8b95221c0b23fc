# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One AMQP 1.0 connection per transport, run on the native I/O thread.

The controller owns the connection, its links, the reply receiver, send
retries, credit and failover. Everything here runs on the I/O thread except
the ``submit_*``/``subscribe``/``shutdown`` entry points, which hand work
over with :meth:`eventloop.IOLoop.call_soon`.

Connection lifecycle (state x event -> next state: action)::

    IDLE       x start      -> CONNECTING : open socket and AMQP connection
    CONNECTING x up         -> ACTIVE     : pick addressing, attach links,
                                            flush queued sends
    CONNECTING x lost       -> WAITING    : next host, back off
    ACTIVE     x lost       -> WAITING    : fail/requeue in-flight sends,
                                            next host, back off
    WAITING    x retry      -> CONNECTING : open socket and AMQP connection
    any        x shutdown   -> CLOSED     : close links and connection

Sender link lifecycle: DECLARING (RabbitMQ topology) -> ATTACHING -> ACTIVE
-> CLOSED (idle for default_sender_link_timeout, refused, or connection
lost). Receiver links follow the same path without the idle timeout.
"""

import os
import socket
import sys
import uuid

import oslo_messaging as om
import proton
import pyngus

from oslo_messaging_amqp1 import addressing
from oslo_messaging_amqp1 import codec
from oslo_messaging_amqp1 import eventloop
from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import pyngus_compat
from oslo_messaging_amqp1 import topology

LOG = green.IOLogger(__name__)

IDLE, CONNECTING, ACTIVE, WAITING, CLOSED = (
    'idle', 'connecting', 'active', 'waiting', 'closed')

# mechanisms that authenticate a named user (the proton wheels only
# implement PLAIN; the others need a Cyrus SASL build)
_USER_MECHANISMS = 'PLAIN SCRAM-SHA-256 SCRAM-SHA-1 DIGEST-MD5'

_SASL_OUTCOMES = {proton.SASL.AUTH: 'credentials refused',
                  proton.SASL.SYS: 'SASL system error',
                  proton.SASL.PERM: 'SASL permanent error, e.g. no common '
                                    'mechanism',
                  proton.SASL.TEMP: 'SASL temporary error'}

# Pre-settled sends complete once their bytes left for the socket: past
# HIGH bytes waiting in the transport, callers wait until it drains to LOW,
# so a fast caster cannot fill memory faster than the network takes it.
_OUTPUT_HIGH_WATER = 1024 * 1024
_OUTPUT_LOW_WATER = 256 * 1024

# how long unsubscribe waits for the peer to answer a detach
_DETACH_WAIT = 2.0

_CONN_TABLE = {
    (IDLE, 'start'): (CONNECTING, '_open'),
    (CONNECTING, 'up'): (ACTIVE, '_on_up'),
    (CONNECTING, 'lost'): (WAITING, '_on_lost'),
    (ACTIVE, 'lost'): (WAITING, '_on_lost'),
    (WAITING, 'retry'): (CONNECTING, '_open'),
}


class Host:
    """One host of the transport URL."""

    def __init__(self, hostname, port, username=None, password=None):
        self.hostname = hostname or 'localhost'
        self.port = int(port or 5672)
        self.username = username
        self.password = password

    def __str__(self) -> str:
        # never the password
        return '%s:%s' % (self.hostname, self.port)


class SendTask:
    """A message to deliver: cast, call, reply, heartbeat or notification.

    ``route`` maps the current addresser to an addressing.Route.
    """

    def __init__(self, route, message, timeout, retry, presettled,
                 is_call=False, monitor=None, label='message',
                 on_done=None):
        self.route = route
        self.on_done = on_done  # on_done(task, error) once finished
        self.message = message
        self.deadline = eventloop.now() + timeout
        self.timeout = timeout
        self.retry = retry  # None or <0: forever
        self.presettled = presettled
        self.is_call = is_call
        self.monitor = monitor
        self.label = label
        self.waiter = eventloop.Waiter()
        self.attempts = 0
        self.timer = None
        self.monitor_timer = None
        self.sent = False
        self.stage = 'queued'

    def can_retry(self) -> bool:
        """Is one more attempt allowed (deadline aside)?"""
        return self.retry is None or self.retry < 0 or \
            self.attempts <= self.retry

    def finish(self, value=None, error=None) -> None:
        """Complete the task once (I/O thread)."""
        if self.waiter.done():
            return
        for t in (self.timer, self.monitor_timer):
            if t is not None:
                t.cancel()
        if error is not None:
            self.waiter.fail(error)
        else:
            self.waiter.set(value)
        if self.on_done is not None:
            self.on_done(self, error)


class Subscription:
    """Receivers of one server or listener: routes, inbox and credit."""

    def __init__(self, routes, inbox, credit, label):
        self.routes = routes  # addresser -> [Route]
        self.inbox = inbox
        self.credit = credit
        self.label = label
        self.links = []
        self.closed = False
        self.detaching = set()  # receivers whose detach the peer owes
        self.detached = None    # Waiter set once it has answered them all

    def gone(self, rx) -> None:
        """rx's detach was answered: the waiter fires once all are."""
        self.detaching.discard(rx)
        if not self.detaching and self.detached is not None:
            self.detached.set()


class _Sender:
    """A cached sender link to one address and the tasks waiting on it."""

    def __init__(self, ctl, address):
        self.ctl = ctl
        self.address = address
        self.link = None
        self.state = 'declaring'
        self.queue = []
        self.inflight = set()
        self.last_used = eventloop.now()
        self.idle_timer = None

    # pyngus SenderEventHandler
    def sender_active(self, link) -> None:
        self.state = 'active'
        self.flush()

    def credit_granted(self, link) -> None:
        self.flush()

    def sender_remote_closed(self, link, condition) -> None:
        why = _condition_text(condition)
        # the tasks waiting on it report it (they fail or retry)
        LOG.info('AMQP 1.0 peer closed the sender link to %s: %s',
                 self.address, why)
        self.ctl.sender_gone(self, why)
        link.close()

    def sender_failed(self, link, error) -> None:
        LOG.info('Sender link to %s failed: %s', self.address, error)
        self.ctl.sender_gone(self, str(error))

    def sender_closed(self, link) -> None:
        self.ctl.drop_link(link)

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
            self.ctl.transmit(self, task)
        self.last_used = eventloop.now()


class _Receiver:
    """pyngus receiver callbacks for one link of a Subscription.

    Credit given back by settled messages is owed to the peer until half
    of the link's credit is: one flow frame per batch, not per message.
    """

    kind = 'receiver'  # the link names' prefix

    def __init__(self, ctl, sub, route, credit=1):
        self.ctl = ctl
        self.sub = sub
        self.route = route
        self.link = None
        self.owed = 0
        self.refill = max(1, credit // 2)

    def attach(self, conn, address, source, credit) -> None:
        """Create and open the link with credit (I/O thread)."""
        name = '%s-%s' % (self.kind, uuid.uuid4().hex)
        self.link = conn.create_receiver(address, source,
                                         event_handler=self, name=name)
        pyngus_compat.decode_in_python(self.link)
        self.link.add_capacity(credit)
        self.link.open()

    def give_credit(self) -> None:
        """One message is done with: flow once a batch is owed."""
        self.owed += 1
        if self.owed >= self.refill:
            self.link.add_capacity(self.owed)
            self.owed = 0

    def receiver_active(self, link) -> None:
        LOG.debug('Receiving from %s', link.source_address)

    def receiver_remote_closed(self, link, condition) -> None:
        why = _condition_text(condition)
        LOG.warning('AMQP 1.0 peer closed the receiver link from %s: %s',
                    self.route.address, why)
        link.close()
        self.ctl.receiver_gone(self, why)

    def receiver_failed(self, link, error) -> None:
        LOG.warning('Receiver link from %s failed: %s',
                    self.route.address, error)
        self.ctl.receiver_gone(self, str(error))

    def receiver_closed(self, link) -> None:
        self.ctl.drop_link(link)
        if self.sub is not None:
            self.sub.gone(self)

    def release(self, handle) -> None:
        """Give a delivery back unread, with no new credit (detaching)."""
        try:
            self.link.message_released(handle)
        except Exception as exc:
            LOG.debug('cannot release %s: %s', handle, exc)

    def message_received(self, link, message, handle) -> None:
        if self.sub.closed:
            # sent before the peer saw our detach: it can go elsewhere
            self.release(handle)
            return
        self.sub.inbox.put((self, handle, message))


class _ReplyReceiver(_Receiver):
    """The receiver of replies and heartbeats to this process's calls."""

    kind = 'reply'

    def __init__(self, ctl, route, credit):
        super().__init__(ctl, None, route, credit)
        self.address = None

    def receiver_active(self, link) -> None:
        self.address = link.source_address
        LOG.debug('Replies arrive at %s', self.address)
        self.ctl.reply_ready()

    def receiver_remote_closed(self, link, condition) -> None:
        why = _condition_text(condition)
        LOG.warning('AMQP 1.0 peer closed the reply link: %s', why)
        link.close()
        self.ctl.reply_gone(why)

    def receiver_failed(self, link, error) -> None:
        self.ctl.reply_gone(str(error))

    def message_received(self, link, message, handle) -> None:
        link.message_accepted(handle)
        self.give_credit()
        self.ctl.reply_received(message)


class _Encoded:
    """A message's bytes, made at transmit time, as pyngus wants them."""

    __slots__ = ('data',)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def encode(self) -> bytes:
        return self.data


def _condition_text(condition) -> str:
    if condition is None:
        return 'no reason given'
    return '%s: %s' % (condition.name, condition.description)


class Controller(pyngus.ConnectionEventHandler):
    """The connection of one transport and everything that runs on it."""

    def __init__(self, conf, url, default_exchange=None,
                 allowed_remote_exmods=None) -> None:
        pyngus_compat.install()
        self.opts = conf.oslo_messaging_amqp
        self.hosts = [Host(h.hostname, h.port, h.username, h.password)
                      for h in url.hosts] or [Host('localhost', 5672)]
        self.vhost = url.virtual_host or None
        self.default_exchange = default_exchange
        self.container_id = self.opts.container_name or '%s:%s:%s:%s' % (
            socket.gethostname(), os.path.basename(sys.argv[0] or 'python'),
            os.getpid(), uuid.uuid4().hex[:8])
        self.loop = eventloop.IOLoop('amqp1-io')
        self.container = pyngus.Container(self.container_id)
        self.state = IDLE
        self.host_index = 0
        self.delay = 0
        self.conn = None
        self.sock = None
        self.addresser = None
        self.declarer = None
        self.product = None
        self.auth_error = None
        self.last_error = None
        self.pending = []           # tasks waiting for the connection
        self.drain_waiters = []     # pre-settled sends until output drains
        self.unwritten = 0          # bytes given to proton, not yet written
        self.senders = {}           # address -> _Sender
        self.subs = []              # Subscriptions
        self.calls = {}             # message id -> SendTask
        self.reply = None           # _ReplyReceiver
        self.reply_waiting = []     # calls waiting for the reply address
        self.reply_retry = None
        self.reply_queue = 'reply.' + uuid.uuid4().hex  # RabbitMQ only
        self.rabbit_vhost = False   # send 'vhost:NAME' as Open hostname
        self.reopen_now = False     # reconnect to the same host at once
        self.loop.call_soon(self._event, 'start')

    # ------------------------------------------------------------------
    # entry points for other threads
    # ------------------------------------------------------------------

    def submit(self, task: SendTask) -> SendTask:
        """Queue a send (any thread); wait on task.waiter."""
        self.loop.call_soon(self._dispatch, task)
        return task

    def subscribe(self, sub: Subscription) -> None:
        """Start receiving for sub (any thread)."""
        self.loop.call_soon(self._add_sub, sub)

    def unsubscribe(self, sub: Subscription, wait: bool = True) -> None:
        """Give back sub's unread messages and detach its links (any thread).

        With wait, returns once the peer has answered the detaches (at most
        ``_DETACH_WAIT`` seconds): a router then sends it nothing more.
        """
        waiter = eventloop.Waiter()
        self.loop.call_soon(self._remove_sub, sub, waiter)
        if wait and self.state != CLOSED:
            # after shutdown the I/O thread no longer runs calls
            waiter.wait(_DETACH_WAIT + 1)

    def settle(self, rx, handle, outcome: str) -> None:
        """Settle a message received on rx and give its credit back.

        Any thread; outcome is accept, release, modify or the text of a
        rejection.
        """
        self.loop.call_soon(self._settle, rx, handle, outcome)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Close everything and stop the I/O thread (any thread)."""
        waiter = eventloop.Waiter()
        self.loop.call_soon(self._shutdown, waiter)
        waiter.wait(timeout)
        self.loop.stop(timeout)

    # ------------------------------------------------------------------
    # connection state machine
    # ------------------------------------------------------------------

    def _event(self, event: str) -> None:
        entry = _CONN_TABLE.get((self.state, event))
        if entry is None:
            LOG.debug('connection event %s ignored in state %s', event,
                      self.state)
            return
        self.state, action = entry
        getattr(self, action)()

    def _connection_properties(self, host: Host) -> dict:
        o = self.opts
        props = {
            'hostname': host.hostname,
            'properties': {proton.symbol('process'):
                           os.path.basename(sys.argv[0] or 'python'),
                           proton.symbol('pid'): os.getpid(),
                           proton.symbol('node'): socket.gethostname()},
            'x-force-sasl': True,
        }
        if self.vhost and not o.pseudo_vhost:
            # RabbitMQ picks a virtual host by the 'vhost:' prefix only
            props['hostname'] = ('vhost:' + self.vhost if self.rabbit_vhost
                                 else self.vhost)
        if o.idle_timeout:
            props['idle-time-out'] = o.idle_timeout
        if o.trace:
            props['x-trace-protocol'] = True
        if host.username:
            user = host.username
            if o.sasl_default_realm and '@' not in user:
                user = '%s@%s' % (user, o.sasl_default_realm)
            props['x-username'] = user
            props['x-password'] = host.password or ''
        if o.sasl_mechanisms:
            props['x-sasl-mechs'] = o.sasl_mechanisms
        elif host.username:
            # a user was named: never fall back to ANONYMOUS (RabbitMQ
            # offers it first and would log us in as its default user)
            props['x-sasl-mechs'] = _USER_MECHANISMS
        if o.sasl_config_dir:
            props['x-sasl-config-dir'] = o.sasl_config_dir
        if o.sasl_config_name:
            props['x-sasl-config-name'] = o.sasl_config_name
        if o.ssl or o.ssl_ca_file or o.ssl_cert_file:
            props['x-ssl'] = True
            if o.ssl_ca_file:
                props['x-ssl-ca-file'] = o.ssl_ca_file
            if o.ssl_cert_file:
                props['x-ssl-identity'] = (o.ssl_cert_file,
                                           o.ssl_key_file or None,
                                           o.ssl_key_password or None)
            # the certificate must name the host (or, with
            # ssl_verify_vhost, the virtual host): pyngus checks only the
            # CA when it is given no peer name
            props['x-ssl-peer-name'] = self._ssl_peer_name(host)
        return props

    def _ssl_peer_name(self, host) -> str:
        """The name the peer's TLS certificate must carry."""
        if self.opts.ssl_verify_vhost and self.vhost:
            return self.vhost
        return host.hostname

    def _open(self) -> None:
        host = self.hosts[self.host_index % len(self.hosts)]
        self.current_host = host
        LOG.debug('Connecting to AMQP 1.0 peer %s', host)
        try:
            self.sock = eventloop.Socket(host.hostname, host.port)
            self.sock.connect()
            name = '%s-%s' % (self.container_id, uuid.uuid4().hex[:6])
            self.conn = self.container.create_connection(
                name, self, self._connection_properties(host))
            self.conn.open()
        except Exception as exc:
            self.last_error = '%s: %s' % (host, exc)
            LOG.warning('Cannot connect to AMQP 1.0 peer %s: %s', host, exc)
            self._close_socket()
            self.loop.call_soon(self._event, 'lost')
            return
        self.loop.add_connection(self)

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _discard_connection(self) -> None:
        self.loop.remove_connection(self)
        self._close_socket()
        conn, self.conn = self.conn, None
        if conn is not None:
            self.loop.call_soon(_destroy, conn)

    def _on_up(self) -> None:
        props = dict(self.conn.remote_properties or {})
        mode = addressing.select_mode(self.opts.addressing_mode, props)
        self.product = props.get('product')
        self.addresser = addressing.make_addresser(
            mode, self.opts, self.default_exchange, self.vhost, props,
            self.reply_queue)
        self.declarer = None
        if self.opts.rabbit_quorum_queue and mode != addressing.RABBITMQ:
            # a setting error: every send fails with it until it is fixed
            self.auth_error = (
                'rabbit_quorum_queue is set in [oslo_messaging_amqp] but the '
                'AMQP 1.0 peer %s is %s, not RabbitMQ: quorum queues exist '
                'only on RabbitMQ; unset rabbit_quorum_queue' % (
                    self.current_host, self.product or 'an unknown product'))
            LOG.error('%s', self.auth_error)
            self._event('lost')
            return
        if (mode == addressing.RABBITMQ and self.vhost and
                not self.opts.pseudo_vhost and not self.rabbit_vhost):
            LOG.info('RabbitMQ at %s: opening virtual host %s',
                     self.current_host, self.vhost)
            self.rabbit_vhost = True
            self.reopen_now = True
            self._event('lost')
            return
        if mode == addressing.RABBITMQ:
            if self.addresser.major >= 4:
                self.declarer = topology.ManagementDeclarer(self.conn,
                                                            self.loop)
            else:
                self.declarer = topology.AmqpDeclarer(
                    self.loop, self._amqp091_params())
        self.delay = 0
        self.auth_error = None
        LOG.info('Connected to AMQP 1.0 peer %s (%s %s), %s addressing',
                 self.current_host, self.product or 'unknown product',
                 props.get('version', ''), mode)
        for sub in self.subs:
            self._attach_sub(sub)
        if self.calls or self.reply_waiting:
            self._attach_reply()
        pending, self.pending = self.pending, []
        for task in pending:
            self._dispatch(task)

    def _amqp091_params(self) -> dict:
        host = self.current_host
        o = self.opts
        params = {'host': host.hostname, 'port': host.port,
                  'username': host.username, 'password': host.password,
                  'vhost': (self.vhost if self.vhost and not o.pseudo_vhost
                            else '/'), 'ssl': None}
        if o.ssl or o.ssl_ca_file or o.ssl_cert_file:
            params['ssl'] = {'ca_certs': o.ssl_ca_file,
                             'certfile': o.ssl_cert_file,
                             'keyfile': o.ssl_key_file,
                             'password': o.ssl_key_password,
                             'peer_name': self._ssl_peer_name(host)}
        # py-amqp would pick EXTERNAL whenever RabbitMQ offers it, even for
        # a named user: PLAIN unless no user is named and EXTERNAL allowed
        mechanisms = (o.sasl_mechanisms or '').upper().split()
        params['login_method'] = 'PLAIN'
        if not host.username and 'EXTERNAL' in mechanisms:
            params['login_method'] = 'EXTERNAL'
        return params

    def _on_lost(self) -> None:
        # what was written is gone with the socket: at most once, as sent
        self._release_drain_waiters()
        self.unwritten = 0
        self._discard_connection()
        self.addresser = None
        if self.declarer is not None:
            self.declarer = None
        # sender links die with the connection: their tasks go back in line
        senders, self.senders = self.senders, {}
        for sender in senders.values():
            if sender.idle_timer:
                sender.idle_timer.cancel()
            for task in sender.queue:
                self.pending.append(task)
            sender.queue = []
            for task in sender.inflight:
                self._requeue_lost(task)
            sender.inflight = set()
        for sub in self.subs:
            sub.links = []
        if self.reply is not None:
            self.reply = None
        if self.reopen_now:
            self.reopen_now = False
            self.loop.call_soon(self._event, 'retry')
            return
        self.host_index += 1
        if self.delay == 0:
            self.delay = self.opts.connection_retry_interval
        else:
            self.delay = min(self.delay + self.opts.connection_retry_backoff,
                             self.opts.connection_retry_interval_max)
        LOG.info('Reconnecting to %s in %s seconds',
                 self.hosts[self.host_index % len(self.hosts)], self.delay)
        self.loop.call_later(self.delay, lambda: self._event('retry'))
        if self.auth_error:
            # a wrong password or certificate will not fix itself
            self._fail_pending(self.auth_error)

    def _fail_pending(self, text) -> None:
        """Fail what waits for the connection with MessageDeliveryFailure."""
        for task in list(self.pending):
            self._fail(task, om.MessageDeliveryFailure(text))
        self.pending = []
        for task in list(self.reply_waiting):
            self._fail(task, om.MessageDeliveryFailure(text))
        self.reply_waiting = []

    # pyngus ConnectionEventHandler ---------------------------------------

    def connection_active(self, connection) -> None:
        self._event('up')

    def connection_failed(self, connection, error) -> None:
        if connection is not self.conn:
            return
        LOG.warning('AMQP 1.0 connection to %s failed: %s',
                    self.current_host, error)
        self.last_error = '%s: %s' % (self.current_host, error)
        if 'certificate verify failed' in str(error):
            self._diagnose_tls(self.current_host)
        self._event('lost')

    def _diagnose_tls(self, host) -> None:
        """Find out why the peer's certificate was refused.

        Proton does not say; a handshake from Python on a helper thread
        does, and the callers then fail with that.
        """
        params = self._amqp091_params()['ssl']

        def work():
            why = topology.tls_diagnosis(host.hostname, host.port, params)
            text = ('TLS to %s: the peer\'s certificate was refused: %s '
                    '(CA file %r, expected name %r): check ssl_ca_file and '
                    'ssl_verify_vhost in [oslo_messaging_amqp] or the '
                    'certificate of the peer' %
                    (host, why, params.get('ca_certs') or 'the system CAs',
                     params.get('peer_name')))
            self.loop.call_soon(self._tls_failed, host, text)

        self.loop.start_helper(work, 'amqp1-tls-check')

    def _tls_failed(self, host, text) -> None:
        if self.state == ACTIVE or host is not self.current_host:
            return
        if text != self.auth_error:
            LOG.error('%s', text)
        self.auth_error = text
        self._fail_pending(text)

    def connection_remote_closed(self, connection, condition) -> None:
        if connection is not self.conn:
            return
        why = _condition_text(condition)
        LOG.warning('AMQP 1.0 peer %s closed the connection: %s',
                    self.current_host, why)
        self.last_error = '%s: %s' % (self.current_host, why)
        if condition is not None and 'unauthorized' in str(condition.name):
            self.auth_error = self._auth_text(why)
            LOG.error('%s', self.auth_error)
        self._event('lost')

    def connection_closed(self, connection) -> None:
        if connection is self.conn:
            self._event('lost')

    def sasl_done(self, connection, pn_sasl, result) -> None:
        if result != proton.SASL.OK:
            self.auth_error = self._auth_text(_SASL_OUTCOMES.get(
                result, 'SASL outcome %s' % result))
            LOG.error('%s', self.auth_error)
            # the peer may keep the socket open: fail the callers now
            self.loop.call_soon(self._auth_failed, connection)

    def _auth_failed(self, connection) -> None:
        if connection is self.conn:
            self._event('lost')

    def _auth_text(self, detail: str) -> str:
        host = self.current_host
        return ('AMQP 1.0 authentication failed at %s for user %r (%s): '
                'check the user name and password in transport_url and '
                'sasl_mechanisms in [oslo_messaging_amqp]' %
                (host, host.username or 'anonymous', detail))

    # the I/O loop's view of this connection --------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    def io_process(self, now: float):
        conn = self.conn
        if conn is None:
            return None
        return conn.process(now) or None

    def io_wants(self):
        conn = self.conn
        if conn is None or self.sock is None or self.sock.sock is None:
            return False, False
        return conn.needs_input > 0, conn.has_output > 0

    def io_read(self) -> None:
        conn = self.conn
        if conn is None or self.sock is None:
            return
        try:
            data = self.sock.sock.recv(max(conn.needs_input, 1))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._socket_error(exc)
            return
        if not data:
            self._socket_error('connection closed by peer')
            return
        conn.process_input(data)

    def io_write(self) -> None:
        conn = self.conn
        if conn is None or self.sock is None:
            return
        data = conn.output_data()
        if not data:
            return
        try:
            count = self.sock.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._socket_error(exc)
            return
        conn.output_written(count)
        if conn.has_output == 0:
            # nothing pending: no frames hidden in proton either
            self.unwritten = 0
        else:
            self.unwritten = max(0, self.unwritten - count)
        if self.drain_waiters and self._backlog() < _OUTPUT_LOW_WATER:
            self._release_drain_waiters()

    def _backlog(self) -> int:
        """Bytes sent but not yet on the wire.

        The transport's pending output, what proton keeps in the sessions
        beyond the peer's incoming window, and the bytes handed to proton
        since its output was last empty: proton reports at most one frame
        of pending output, while the frames it made of transfers a peer's
        large window let through wait in a buffer of its own (1 GB after
        6 s of 64 KB casts to RabbitMQ 3.10, before this was counted).
        """
        total = self.conn.has_output + self.unwritten
        sessions = set()
        for sender in self.senders.values():
            pn_link = pyngus_compat.pn_link(sender.link)
            if pn_link is not None and pn_link.session not in sessions:
                sessions.add(pn_link.session)
                total += pn_link.session.outgoing_bytes
        return total

    def _release_drain_waiters(self) -> None:
        """Complete the pre-settled sends held back by a full buffer."""
        waiters, self.drain_waiters = self.drain_waiters, []
        for task in waiters:
            task.finish()

    def io_check(self) -> None:
        if self.sock is not None and self.sock.sock is not None:
            try:
                self.sock.sock.fileno()
                return
            except OSError as exc:
                self._socket_error(exc)

    def io_closed(self) -> None:
        self._close_socket()

    def _socket_error(self, error) -> None:
        conn = self.conn
        LOG.debug('socket to %s: %s', self.current_host, error)
        self.last_error = '%s: %s' % (self.current_host, error)
        if conn is not None:
            conn.close_input()
            conn.close_output()
        self._close_socket()
        self.loop.remove_connection(self)
        if self.state in (CONNECTING, ACTIVE):
            if self.state == ACTIVE:
                LOG.warning('Lost the AMQP 1.0 connection to %s: %s',
                            self.current_host, error)
            self._event('lost')

    # ------------------------------------------------------------------
    # sending
    # ------------------------------------------------------------------

    def _dispatch(self, task: SendTask) -> None:
        if task.waiter.done():
            return
        if task.timer is None:
            task.timer = self.loop.call_later(
                max(0.0, task.deadline - eventloop.now()),
                lambda: self._expire(task))
        if self.state == CLOSED:
            self._fail(task, om.MessageDeliveryFailure(
                'the transport was cleaned up'))
            return
        if self.state != ACTIVE:
            if self.auth_error:
                self._fail(task, om.MessageDeliveryFailure(self.auth_error))
                return
            task.stage = 'waiting for the connection'
            self.pending.append(task)
            return
        if task.is_call and (self.reply is None or
                             self.reply.address is None):
            task.stage = 'waiting for the reply link'
            self.reply_waiting.append(task)
            self._attach_reply()
            return
        try:
            route = task.route(self.addresser)
        except Exception as exc:
            self._fail(task, om.MessageDeliveryFailure(
                'no address for %s: %s' % (task.label, exc)))
            return
        sender = self.senders.get(route.address)
        if sender is None:
            sender = self._new_sender(route)
        task.stage = sender
        sender.queue.append(task)
        sender.flush()

    def _new_sender(self, route) -> _Sender:
        sender = _Sender(self, route.address)
        self.senders[route.address] = sender
        if route.declare and self.declarer is not None:
            self._declare(route.declare,
                          lambda err: self._sender_declared(sender, err))
        else:
            self._sender_declared(sender, None)
        return sender

    def _declare(self, ops, done) -> None:
        """Declare RabbitMQ topology; a broken declarer is replaced."""
        if self.declarer.failed:
            self.declarer.close()
            self.declarer = topology.ManagementDeclarer(self.conn, self.loop)
        self.declarer.declare(ops, done)

    def _sender_declared(self, sender, error) -> None:
        if self.senders.get(sender.address) is not sender:
            return
        if error:
            LOG.error('Cannot send to %s: %s', sender.address, error)
            self.sender_gone(sender, error)
            return
        sender.state = 'attaching'
        name = 'sender-%s' % uuid.uuid4().hex
        sender.link = self.conn.create_sender(
            sender.address, sender.address, event_handler=sender, name=name)
        sender.link.open()
        self._arm_idle(sender)

    def _arm_idle(self, sender) -> None:
        timeout = self.opts.default_sender_link_timeout

        def check():
            if self.senders.get(sender.address) is not sender:
                return
            idle = eventloop.now() - sender.last_used
            if sender.queue or sender.link is None or \
                    sender.link.pending or idle < timeout:
                sender.idle_timer = self.loop.call_later(
                    max(1.0, timeout - idle), check)
                return
            LOG.debug('Closing idle sender link to %s', sender.address)
            del self.senders[sender.address]
            sender.link.close()
        sender.idle_timer = self.loop.call_later(timeout, check)

    def transmit(self, sender: _Sender, task: SendTask) -> None:
        """Write task's message on sender's link (link has credit)."""
        task.attempts += 1
        if task.message.body is None and self.addresser.needs_body:
            # a heartbeat: RabbitMQ 4 drops messages without a body section
            task.message.body = b''
        if task.is_call:
            task.message.reply_to = self.reply.address
            self.calls[task.message.id] = task
            if task.monitor and task.monitor_timer is None:
                self.start_monitor(task)
        # pyngus sends what message.encode() returns
        message = _Encoded(task.message.encode())
        self.unwritten += len(message.data)
        if task.presettled:
            sender.link.send(message)
            task.sent = True
            if not task.is_call:
                if self._backlog() > _OUTPUT_HIGH_WATER:
                    self.drain_waiters.append(task)
                else:
                    task.finish()
            return

        def outcome(link, handle, state, info):
            sender.inflight.discard(task)
            self._outcome(task, state, info)
        sender.inflight.add(task)
        sender.link.send(message, outcome)
        task.sent = True

    def _outcome(self, task: SendTask, state, info) -> None:
        if task.waiter.done():
            return
        S = pyngus.SenderLink
        if state == S.ACCEPTED:
            if not task.is_call:
                task.finish()
            return
        if state == S.RELEASED or (state == S.MODIFIED and
                                   not info.get('delivery-failed')):
            self.calls.pop(getattr(task.message, 'id', None), None)
            if task.can_retry():
                LOG.debug('%s released, resending in %ss', task.label,
                          self.opts.link_retry_delay)
                self.loop.call_later(self.opts.link_retry_delay,
                                     lambda: self._dispatch(task))
            else:
                self._fail(task, om.MessageDeliveryFailure(
                    '%s was not delivered: nobody consumes its address '
                    '(released)' % task.label))
            return
        if state == S.ABORTED:
            # link or connection gone before an outcome: try again
            self.calls.pop(getattr(task.message, 'id', None), None)
            if task.can_retry():
                self.loop.call_later(self.opts.link_retry_delay,
                                     lambda: self._dispatch(task))
            else:
                self._fail(task, om.MessageDeliveryFailure(
                    '%s: connection lost before delivery' % task.label))
            return
        detail = info.get('condition') if info else None
        name = {S.REJECTED: 'rejected', S.MODIFIED: 'modified',
                S.TIMED_OUT: 'timed out'}.get(state, 'unknown')
        self._fail(task, om.MessageDeliveryFailure(
            '%s was refused by the AMQP 1.0 peer (outcome %s%s)' %
            (task.label, name, ': %s' % detail if detail else '')))

    def _requeue_lost(self, task: SendTask) -> None:
        """A send whose outcome died with the connection."""
        if task.waiter.done():
            return
        self.calls.pop(getattr(task.message, 'id', None), None)
        if task.can_retry():
            self.pending.append(task)
        else:
            self._fail(task, om.MessageDeliveryFailure(
                '%s: connection lost before delivery was confirmed' %
                task.label))

    def _expire(self, task: SendTask) -> None:
        if task.waiter.done():
            return
        self.calls.pop(getattr(task.message, 'id', None), None)
        if task in self.reply_waiting:
            self.reply_waiting.remove(task)
        if task in self.pending:
            self.pending.remove(task)
        if self.auth_error:
            err = om.MessageDeliveryFailure(self.auth_error)
        elif task.is_call and task.sent:
            err = om.MessagingTimeout(
                'Timed out waiting for a reply to %s after %ss' %
                (task.label, task.timeout))
        else:
            why = self.last_error if self.state != ACTIVE else task.stage
            if isinstance(why, _Sender):
                link = why.link
                why = 'sender link to %s %s, credit %s, %s in flight' % (
                    why.address, why.state, link.credit if link else '-',
                    'one' if task.sent else 'none')
            err = om.MessagingTimeout(
                'Timed out sending %s after %ss (%s)' %
                (task.label, task.timeout, why))
        task.finish(error=err)

    def _fail(self, task: SendTask, error) -> None:
        self.calls.pop(getattr(task.message, 'id', None), None)
        task.finish(error=error)

    def sender_gone(self, sender: _Sender, why: str) -> None:
        """A sender link died: a failed attempt for its waiting tasks.

        Those with retries left go again after link_retry_delay.
        """
        if self.senders.get(sender.address) is sender:
            del self.senders[sender.address]
        if sender.idle_timer:
            sender.idle_timer.cancel()
        tasks, sender.queue = sender.queue, []
        for task in tasks:
            if task.waiter.done():
                continue
            task.attempts += 1
            if not task.can_retry():
                self._fail(task, om.MessageDeliveryFailure(
                    '%s: the AMQP 1.0 peer refused the link to %s (%s)' %
                    (task.label, sender.address, why)))
                continue
            self.loop.call_later(self.opts.link_retry_delay,
                                 lambda t=task: self._dispatch(t))

    def drop_link(self, link) -> None:
        """Free a closed link once its callbacks returned."""
        self.loop.call_soon(_destroy, link)

    # ------------------------------------------------------------------
    # replies
    # ------------------------------------------------------------------

    def _attach_reply(self) -> None:
        if self.reply is not None or self.state != ACTIVE:
            return
        route = self.addresser.reply_listen()
        credit = self.opts.reply_link_credit
        rx = _ReplyReceiver(self, route or addressing.Route(None), credit)
        self.reply = rx

        def attach(error=None):
            if self.reply is not rx or self.state != ACTIVE:
                return
            if error:
                LOG.error('Cannot set up the reply queue: %s', error)
                self.reply_gone(error)
                return
            source = route.address if route else None
            rx.attach(self.conn, source or self.container_id, source,
                      credit)
        if route and route.declare and self.declarer is not None:
            self._declare(route.declare, attach)
        else:
            attach()

    def reply_ready(self) -> None:
        """The reply address is known: send the calls that waited."""
        waiting, self.reply_waiting = self.reply_waiting, []
        for task in waiting:
            self._dispatch(task)

    def reply_gone(self, why: str) -> None:
        """The reply link died: set it up again later."""
        self.reply = None
        if self.state == ACTIVE and self.reply_retry is None:
            def retry():
                self.reply_retry = None
                if self.reply_waiting or self.calls:
                    self._attach_reply()
            self.reply_retry = self.loop.call_later(
                self.opts.link_retry_delay, retry)

    def reply_received(self, message) -> None:
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
                task.monitor_timer = self.loop.call_later(
                    task.monitor, lambda: self._monitor_expired(task))
            return
        del self.calls[message.correlation_id]
        task.finish(message)

    def _monitor_expired(self, task) -> None:
        if task.waiter.done():
            return
        self.calls.pop(task.message.id, None)
        task.finish(error=om.MessagingTimeout(
            'No heartbeat from the server of %s within the call monitor '
            'timeout of %ss' % (task.label, task.monitor)))

    def start_monitor(self, task) -> None:
        """Arm the call monitor of a call (I/O thread)."""
        if task.monitor:
            task.monitor_timer = self.loop.call_later(
                task.monitor, lambda: self._monitor_expired(task))

    # ------------------------------------------------------------------
    # receiving
    # ------------------------------------------------------------------

    def _add_sub(self, sub: Subscription) -> None:
        self.subs.append(sub)
        if self.state == ACTIVE:
            self._attach_sub(sub)

    def _attach_sub(self, sub: Subscription) -> None:
        if sub.closed:
            return
        for route in sub.routes(self.addresser):
            self._attach_receiver(sub, route)

    def _attach_receiver(self, sub, route) -> None:
        rx = _Receiver(self, sub, route, sub.credit)
        sub.links.append(rx)

        def attach(error=None):
            if sub.closed or self.state != ACTIVE or rx not in sub.links:
                return
            if error:
                LOG.error('Cannot subscribe to %s: %s', route.address, error)
                self.receiver_gone(rx, error)
                return
            rx.attach(self.conn, route.address, route.address, sub.credit)
        if route.declare and self.declarer is not None:
            self._declare(route.declare, attach)
        else:
            attach()

    def receiver_gone(self, rx: _Receiver, why: str) -> None:
        """A receiver died: attach it again after link_retry_delay."""
        sub = rx.sub
        if rx in sub.links:
            sub.links.remove(rx)
        if sub.closed or self.state != ACTIVE:
            return
        if self.declarer is not None:
            self.declarer.forget()

        def again():
            if not sub.closed and self.state == ACTIVE:
                self._attach_receiver(sub, rx.route)
        self.loop.call_later(self.opts.link_retry_delay, again)

    def _remove_sub(self, sub: Subscription, waiter) -> None:
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
            if rx.link is not None and not rx.link.closed:
                sub.detaching.add(rx)
                rx.link.close()
        sub.links = []
        if self.state != ACTIVE:
            sub.detaching.clear()   # nobody will answer
        if sub.detaching:
            self.loop.call_later(_DETACH_WAIT, waiter.set)
        else:
            waiter.set()

    def _settle(self, rx, handle, outcome: str) -> None:
        link = rx.link
        if link is None or link.closed or self.conn is None:
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

    # ------------------------------------------------------------------
    # shutdown
    # ------------------------------------------------------------------

    def _shutdown(self, waiter) -> None:
        self.state = CLOSED
        for task in list(self.pending) + list(self.reply_waiting):
            self._fail(task, om.MessageDeliveryFailure(
                'the transport was cleaned up'))
        for task in list(self.calls.values()):
            self._fail(task, om.MessageDeliveryFailure(
                'the transport was cleaned up'))
        self.pending, self.reply_waiting = [], []
        for sender in list(self.senders.values()):
            for task in sender.queue:
                self._fail(task, om.MessageDeliveryFailure(
                    'the transport was cleaned up'))
        self.senders = {}
        conn = self.conn
        if conn is not None:
            try:
                conn.close()
                # push the close frames out before the socket goes
                self.io_write()
            except Exception:
                pass
        self._discard_connection()
        waiter.set()


def _destroy(obj) -> None:
    try:
        obj.destroy()
    except Exception as exc:
        LOG.debug('destroy %s: %s', obj, exc)
