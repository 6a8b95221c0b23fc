# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Declaring RabbitMQ queues and bindings before links attach to them.

RabbitMQ 4.x: HTTP-over-AMQP requests on the ``/management`` node, sent on
the driver's own AMQP 1.0 connection (a paired sender/receiver).

RabbitMQ 3.x: its AMQP 1.0 plugin cannot bind a named queue to an exchange,
so the declarations go over AMQP 0-9-1 on the same listener (port 5672
serves both protocols there), with py-amqp, from a helper thread.

Both run their callbacks on the I/O thread: ``declare(ops, done)`` calls
``done(None)`` on success or ``done(error_text)``.
"""

import socket
import ssl as ssl_module
import urllib.parse
import uuid

import proton

from oslo_messaging_amqp1 import addressing
from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import pyngus_compat

LOG = green.IOLogger(__name__)
MANAGEMENT_NODE = '/management'
# requests on the wire at once: RabbitMQ answers them one after the other,
# so each one's timeout then measures its own answer, not a queue of
# thousands (1,000 servers starting on a RabbitMQ 4 cluster)
MAX_IN_FLIGHT = 16
_PAIRED = proton.symbol('paired')


class _Batch:
    """One declare() request: ops still to go and the callback."""

    def __init__(self, ops, done) -> None:
        self.ops = list(ops)
        self.done = done


class ManagementDeclarer:
    """RabbitMQ 4.x topology over the ``/management`` link pair."""

    def __init__(self, connection, loop=None, timeout: float = 10.0) -> None:
        self._loop = loop
        self._timeout = timeout
        self._declared = set()
        self._pending = {}  # message id -> (op, batch)
        self._waiting = []  # batches queued before the pair came up
        self._queued = []   # batches waiting for a free request slot
        self._active = 0
        self._failed = None
        name = 'management-link-pair-' + uuid.uuid4().hex[:8]
        self._sender = connection.create_sender(
            '', MANAGEMENT_NODE, event_handler=self, name=name,
            properties={'snd-settle-mode': 'settled'})
        # RabbitMQ wants the pair on one session
        self._receiver = pyngus_compat.receiver_on_session_of(
            connection, self._sender, name, MANAGEMENT_NODE, self,
            {'snd-settle-mode': 'settled'})
        for link in (self._sender, self._receiver):
            pyngus_compat.pn_link(link).properties = {_PAIRED: True}
            link.open()
        self._receiver.add_capacity(100)
        self._later(
            lambda: self._active < 2 and self._lost(
                'the link pair was not attached within %ss' % timeout))

    def _later(self, fn):
        """Run fn after the timeout (when there is a loop to time it)."""
        if self._loop is None:
            return None
        return self._loop.call_later(self._timeout, fn)

    @property
    def failed(self) -> bool:
        """True once the link pair is unusable (make a new declarer)."""
        return self._failed is not None

    # pyngus link callbacks
    def sender_active(self, link) -> None:
        self._link_up()

    def receiver_active(self, link) -> None:
        self._link_up()

    def _link_up(self) -> None:
        self._active += 1
        if self._active == 2:
            waiting, self._waiting = self._waiting, []
            for batch in waiting:
                self._next(batch)

    def credit_granted(self, link) -> None:
        pass

    def _lost(self, why) -> None:
        if self._failed is None:
            LOG.warning('RabbitMQ management node: %s', why)
        self._failed = why or 'management link closed'
        pending, self._pending = self._pending, {}
        waiting, self._waiting = self._waiting + self._queued, []
        self._queued = []
        batches = {}
        for _op, batch, timer in pending.values():
            if timer is not None:
                timer.cancel()
            batches[id(batch)] = batch
        for batch in list(batches.values()) + waiting:
            batch.done('RabbitMQ management node: %s' % self._failed)

    def sender_remote_closed(self, link, condition) -> None:
        self._lost(condition and condition.description)

    def receiver_remote_closed(self, link, condition) -> None:
        self._lost(condition and condition.description)

    def sender_failed(self, link, error) -> None:
        self._lost(error)

    def receiver_failed(self, link, error) -> None:
        self._lost(error)

    def sender_closed(self, link) -> None:
        pass

    def receiver_closed(self, link) -> None:
        pass

    def message_received(self, link, message, handle) -> None:
        link.add_capacity(1)
        try:
            link.message_accepted(handle)
        except Exception:  # pre-settled replies have nothing to settle
            pass
        entry = self._pending.pop(message.correlation_id, None)
        if entry is None:
            LOG.debug('management reply for unknown request %s',
                      message.correlation_id)
            return
        op, batch, timer = entry
        if timer is not None:
            timer.cancel()
        status = str(message.subject or '')
        if status in ('200', '201', '204'):
            self._declared.add(op)
            self._next(batch)
        else:
            batch.done('RabbitMQ refused %s: %s %s' %
                       (_describe(op), status, message.body))
        while self._queued and len(self._pending) < MAX_IN_FLIGHT and \
                not self._failed:
            self._next(self._queued.pop(0))

    # declaring
    def declare(self, ops, done) -> None:
        """Declare ops (Queue/Bind tuples) not declared before."""
        batch = _Batch([op for op in ops if op not in self._declared], done)
        if self._failed:
            done('RabbitMQ management node: %s' % self._failed)
        elif self._active < 2 and batch.ops:
            self._waiting.append(batch)
        else:
            self._next(batch)

    def _next(self, batch) -> None:
        while batch.ops and batch.ops[0] in self._declared:
            batch.ops.pop(0)
        if not batch.ops:
            batch.done(None)
            return
        if len(self._pending) >= MAX_IN_FLIGHT:
            self._queued.append(batch)
            return
        op = batch.ops.pop(0)
        message = _request(op)
        msg_id = message.id
        # RabbitMQ may end the pair's session without detaching the links
        # (seen on 4.0.5 after an internal error): no answer is a failure
        timer = self._later(
            lambda: msg_id in self._pending and self._lost(
                'no answer to %s within %ss' % (_describe(op),
                                                self._timeout)))
        self._pending[msg_id] = (op, batch, timer)
        self._sender.send(message)

    def forget(self) -> None:
        """Forget what was declared (the peer may have lost it)."""
        self._declared.clear()

    def close(self) -> None:
        """Detach the link pair."""
        for link in (self._sender, self._receiver):
            try:
                link.close()
            except Exception:
                pass


def _describe(op) -> str:
    if isinstance(op, addressing.Queue):
        return 'queue %s' % op.name
    return 'binding %s -> %s (%s)' % (op.exchange, op.queue, op.key)


def _request(op) -> proton.Message:
    """The HTTP-over-AMQP request that declares op."""
    if isinstance(op, addressing.Queue):
        path = '/queues/' + urllib.parse.quote(op.name, safe='')
        body = {'durable': op.durable, 'auto_delete': op.auto_delete,
                'exclusive': op.exclusive,
                'arguments': dict(op.arguments or {})}
        method = 'PUT'
    else:
        path = '/bindings'
        body = {'source': op.exchange, 'binding_key': op.key,
                'destination_queue': op.queue, 'arguments': {}}
        method = 'POST'
    return proton.Message(id=uuid.uuid4().hex, address=path, subject=method,
                          reply_to='$me', body=body)


class AmqpDeclarer:
    """RabbitMQ 3.x topology over AMQP 0-9-1 (py-amqp) on a helper thread.

    :param params: dict of host, port, username, password, vhost, ssl (a
        dict of ca_certs/certfile/keyfile/password or None)
    """

    def __init__(self, loop, params: dict) -> None:
        self._loop = loop
        self._params = params
        self._declared = set()

    def declare(self, ops, done) -> None:
        """Declare ops on a helper thread; done() runs on the I/O thread."""
        todo = [op for op in ops if op not in self._declared]
        if not todo:
            done(None)
            return

        def work():
            error = self._run(todo)
            self._loop.call_soon(finish, error)

        def finish(error):
            if error is None:
                self._declared.update(todo)
            done(error)

        self._loop.start_helper(work, 'amqp1-declare')

    failed = False  # every declaration opens its own connection

    def forget(self) -> None:
        """Forget what was declared (the broker may have lost it)."""
        self._declared.clear()

    def close(self) -> None:
        """Nothing is kept open."""

    def _run(self, ops):
        p = self._params
        connection_class = _amqp_connection_class()
        conn = connection_class(
            host='%s:%s' % (p['host'], p['port']),
            userid=p.get('username') or 'guest',
            password=p.get('password') or 'guest',
            login_method=p.get('login_method'),
            virtual_host=p.get('vhost') or '/',
            ssl=_ssl_context(p['ssl']) if p.get('ssl') else False,
            connect_timeout=10)
        try:
            conn.connect()
            channel = conn.channel()
            for op in ops:
                if isinstance(op, addressing.Queue):
                    channel.queue_declare(
                        op.name, durable=op.durable, exclusive=op.exclusive,
                        auto_delete=op.auto_delete,
                        arguments=dict(op.arguments or {}))
                else:
                    channel.queue_bind(op.queue, op.exchange, op.key)
            return None
        except Exception as exc:
            return 'RabbitMQ refused a declaration over AMQP 0-9-1 at ' \
                   '%s:%s: %s' % (p['host'], p['port'], exc)
        finally:
            try:
                conn.close()
            except Exception:
                pass


def _ssl_context(s: dict) -> ssl_module.SSLContext:
    """The TLS context of the 0-9-1 declarations: the AMQP 1.0 one's rules.

    The peer's certificate is checked against ssl_ca_file (else the system
    CAs) and must name peer_name; the client certificate and its key
    password are used as given.
    """
    context = ssl_module.create_default_context(
        cafile=s.get('ca_certs') or None)
    context.check_hostname = bool(s.get('peer_name'))
    if s.get('certfile'):
        context.load_cert_chain(s['certfile'], s.get('keyfile') or None,
                                s.get('password') or None)
    context.amqp1_peer_name = s.get('peer_name')
    return context


def tls_diagnosis(hostname: str, port: int, s: dict) -> str:
    """Why a TLS handshake with these settings fails, in OpenSSL's words.

    s is the ``ssl`` dict of the declarer's parameters; a blocking
    handshake, for a helper thread.
    """
    try:
        context = _ssl_context(s)
        with socket.create_connection((hostname, port), timeout=5) as sock:
            with context.wrap_socket(sock,
                                     server_hostname=s.get('peer_name')):
                return 'yet a handshake from Python succeeds'
    except ssl_module.SSLCertVerificationError as exc:
        return exc.verify_message or str(exc)
    except (OSError, ssl_module.SSLError, ValueError) as exc:
        return str(exc)


_CONNECTION_CLASS = []


def _amqp_connection_class():
    """py-amqp's Connection, made to use a given SSLContext as it is.

    py-amqp takes TLS settings as a dict of wrap_socket arguments, which
    cannot carry a key password; an SSLContext passed as ``ssl`` is used
    here with the peer name it carries.
    """
    if _CONNECTION_CLASS:
        return _CONNECTION_CLASS[0]
    import amqp  # py-amqp, a dependency of kombu/oslo.messaging
    from amqp import transport

    class ContextTransport(transport.SSLTransport):
        def __init__(self, host, connect_timeout=None, ssl=None, **kwargs):
            self.amqp1_context = ssl
            super().__init__(host, connect_timeout=connect_timeout,
                             ssl={}, **kwargs)

        def _wrap_socket(self, sock, **sslopts):
            context = self.amqp1_context
            return context.wrap_socket(
                sock, server_hostname=context.amqp1_peer_name)

    class Connection(amqp.Connection):
        def Transport(self, host, connect_timeout, ssl=False,
                      read_timeout=None, write_timeout=None,
                      socket_settings=None, **kwargs):
            if isinstance(ssl, ssl_module.SSLContext):
                return ContextTransport(
                    host, connect_timeout=connect_timeout, ssl=ssl,
                    read_timeout=read_timeout, write_timeout=write_timeout,
                    socket_settings=socket_settings, **kwargs)
            return super().Transport(
                host, connect_timeout, ssl=ssl, read_timeout=read_timeout,
                write_timeout=write_timeout,
                socket_settings=socket_settings, **kwargs)

    _CONNECTION_CLASS.append(Connection)
    return Connection
