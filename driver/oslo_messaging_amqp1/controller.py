# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One AMQP 1.0 connection per transport, run on the native I/O thread.

The controller owns the connection: its state machine, failover between
the URL's hosts, the peer's profile and the topology declarer. Its
``pump`` (connio.SocketPump) moves the bytes between the socket and
proton for the I/O loop. The work on the connection lives in three parts
it creates and tells about the connection coming and going:

* ``sends`` (sending.Sends): sender links, retries, outcomes, timeouts;
* ``replies`` (replies.Replies): the reply link and calls in flight;
* ``receiving`` (receiving.Subscriptions): servers' and listeners' links.

Everything runs on the I/O thread except the ``submit``/``subscribe``/
``unsubscribe``/``settle``/``shutdown`` entry points, which hand work
over with :meth:`eventloop.IOLoop.call_soon`.

Connection lifecycle (state x event -> next state: action)::

    IDLE       x start      -> CONNECTING : open socket and AMQP connection
    CONNECTING x up         -> ACTIVE     : pick the profile, attach links,
                                            flush queued sends
    CONNECTING x lost       -> WAITING    : next host, back off
    ACTIVE     x lost       -> WAITING    : fail/requeue in-flight sends,
                                            next host, back off
    WAITING    x retry      -> CONNECTING : open socket and AMQP connection
    any        x shutdown   -> CLOSED     : close links and connection
"""

import os
import socket
import sys
import uuid

import proton
import pyngus

from oslo_messaging_amqp1 import connio
from oslo_messaging_amqp1 import connparams
from oslo_messaging_amqp1 import eventloop
from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import links
from oslo_messaging_amqp1 import profiles
from oslo_messaging_amqp1 import pyngus_compat
from oslo_messaging_amqp1 import receiving
from oslo_messaging_amqp1 import replies
from oslo_messaging_amqp1 import sending
from oslo_messaging_amqp1 import tasks
from oslo_messaging_amqp1 import topology

LOG = green.IOLogger(__name__)

IDLE, CONNECTING, ACTIVE, WAITING, CLOSED = (
    'idle', 'connecting', 'active', 'waiting', 'closed')

_CONN_TABLE = {
    (IDLE, 'start'): (CONNECTING, '_open'),
    (CONNECTING, 'up'): (ACTIVE, '_on_up'),
    (CONNECTING, 'lost'): (WAITING, '_on_lost'),
    (ACTIVE, 'lost'): (WAITING, '_on_lost'),
    (WAITING, 'retry'): (CONNECTING, '_open'),
}

_CLEANED_UP = 'the transport was cleaned up'


class Controller(pyngus.ConnectionEventHandler):
    """The connection of one transport and everything that runs on it."""

    def __init__(self, conf, url, default_exchange=None) -> None:
        pyngus_compat.install()
        self.opts = conf.oslo_messaging_amqp
        self.params = connparams.ConnectionParams(self.opts, url)
        self.hosts = self.params.hosts
        self.default_exchange = default_exchange
        self.container_id = self.opts.container_name or '%s:%s:%s:%s' % (
            socket.gethostname(), os.path.basename(sys.argv[0] or 'python'),
            os.getpid(), uuid.uuid4().hex[:8])
        self.loop = eventloop.IOLoop('amqp1-io')
        self.container = pyngus.Container(self.container_id)
        self.state = IDLE
        self.host_index = 0
        self.current_host = self.hosts[0]
        self.delay = 0
        self.conn = None
        self.sessions = None        # pyngus_compat.Sessions of conn
        self.pump = connio.SocketPump(self)   # the socket, for the loop
        self.profile = None         # profiles.Profile of the peer
        self.addresser = None
        self.declarer = None
        self.auth_error = None      # fails every send until fixed
        self.last_error = None
        self.vhost_prefix = False   # send 'vhost:NAME' as Open hostname
        self.reopen_now = False     # reconnect to the same host at once
        self.sends = sending.Sends(self)
        self.replies = replies.Replies(self)
        self.receiving = receiving.Subscriptions(self)
        self.loop.call_soon(self._event, 'start')

    @property
    def active(self) -> bool:
        """Is the connection up (links may attach, sends may go)?"""
        return self.state == ACTIVE

    @property
    def closed(self) -> bool:
        """Was the transport cleaned up?"""
        return self.state == CLOSED

    # ------------------------------------------------------------------
    # entry points for other threads
    # ------------------------------------------------------------------

    def submit(self, task: tasks.SendTask) -> tasks.SendTask:
        """Queue a send (any thread); wait on task.waiter."""
        self.loop.call_soon(self.sends.dispatch, task)
        return task

    def subscribe(self, sub: tasks.Subscription) -> None:
        """Start receiving for sub (any thread)."""
        self.loop.call_soon(self.receiving.add, sub)

    def unsubscribe(self, sub: tasks.Subscription, wait: bool = True) -> None:
        """Give back sub's unread messages and detach its links (any thread).

        With wait, returns once the peer has answered the detaches (at most
        ``receiving.DETACH_WAIT`` seconds): a router then sends it nothing
        more.
        """
        waiter = eventloop.Waiter()
        self.loop.call_soon(self.receiving.remove, sub, waiter)
        if wait and self.state != CLOSED:
            # after shutdown the I/O thread no longer runs calls
            waiter.wait(receiving.DETACH_WAIT + 1)

    def settle(self, rx, handle, outcome: str) -> None:
        """Settle a message received on rx and give its credit back.

        Any thread; outcome is accept, release, modify or the text of a
        rejection. The I/O thread settles it on its next pass, within
        ``eventloop.LAZY_DELAY`` (see :meth:`eventloop.IOLoop.call_lazy`),
        or at once when rx has no credit left: its peer waits for it.
        """
        self.loop.call_lazy(self.receiving.settle, (rx, handle, outcome),
                            urgent=rx.starved)

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

    def _open(self) -> None:
        host = self.hosts[self.host_index % len(self.hosts)]
        self.current_host = host
        LOG.debug('Connecting to AMQP 1.0 peer %s', host)
        try:
            self.pump.open(host, self.loop.green)
            name = '%s-%s' % (self.container_id, uuid.uuid4().hex[:6])
            self.conn = self.container.create_connection(
                name, self, self.params.properties(host, self.vhost_prefix))
            pyngus_compat.filter_events(self.conn)
            self.sessions = pyngus_compat.Sessions(self.conn)
            self.conn.open()
        except Exception as exc:
            self.last_error = '%s: %s' % (host, exc)
            LOG.warning('Cannot connect to AMQP 1.0 peer %s: %s', host, exc)
            self.pump.close()
            self.loop.call_soon(self._event, 'lost')
            return
        self.loop.add_connection(self.pump)

    def _discard_connection(self) -> None:
        self.loop.remove_connection(self.pump)
        self.pump.close()
        conn, self.conn = self.conn, None
        self.sessions = None
        if conn is not None:
            self.loop.call_soon(links.destroy, conn)

    def _on_up(self) -> None:
        profile = profiles.select(self.opts.addressing_mode,
                                  dict(self.conn.remote_properties or {}))
        refusal = profile.refusal(self.opts, self.current_host)
        if refusal:
            # a setting error: every send fails with it until it is fixed
            self.auth_error = refusal
            LOG.error('%s', refusal)
            self._event('lost')
            return
        if (profile.vhost_prefix and self.params.real_vhost and
                not self.vhost_prefix):
            LOG.info('%s at %s: opening virtual host %s', profile.product,
                     self.current_host, self.params.vhost)
            self.vhost_prefix = True
            self.reopen_now = True
            self._event('lost')
            return
        self.profile = profile
        self.addresser = profile.addresser(
            self.opts, self.default_exchange, self.params.vhost)
        self.declarer = profile.declarer(self)
        self.delay = 0
        self.auth_error = None
        LOG.info('Connected to AMQP 1.0 peer %s (%s), %s addressing',
                 self.current_host, profile, profile.mode)
        self.receiving.connection_up()
        self.replies.connection_up()
        self.sends.connection_up()

    def _on_lost(self) -> None:
        self._discard_connection()
        self.addresser = None
        self.declarer = None
        self.sends.connection_lost()
        self.receiving.connection_lost()
        self.replies.connection_lost()
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
            self._fail_waiting(self.auth_error)

    def _fail_waiting(self, text: str) -> None:
        """Fail what waits for the connection or the reply link."""
        self.sends.fail_pending(text)
        self.replies.fail_waiting(text)

    # ------------------------------------------------------------------
    # topology, for the parts that attach links
    # ------------------------------------------------------------------

    def declare_then(self, route, then) -> None:
        """Declare route's topology where the peer needs it, then then().

        then(error) runs on the I/O thread; error is None on success or
        when nothing needs declaring. A broken declarer is replaced.
        """
        if not route or not route.declare or self.declarer is None:
            then(None)
            return
        if self.declarer.failed:
            self.declarer.close()
            self.declarer = self.profile.declarer(self)
        self.declarer.declare(route.declare, then)

    def forget_declared(self) -> None:
        """The peer may have lost what was declared: declare it again."""
        if self.declarer is not None:
            self.declarer.forget()

    def drop_link(self, link) -> None:
        """Free a closed link once its callbacks returned."""
        self.loop.call_soon(links.destroy, link)

    # ------------------------------------------------------------------
    # pyngus ConnectionEventHandler
    # ------------------------------------------------------------------

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
        params = self.params.amqp091(host)['ssl']

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
        self._fail_waiting(text)

    def connection_remote_closed(self, connection, condition) -> None:
        if connection is not self.conn:
            return
        why = links.condition_text(condition)
        LOG.warning('AMQP 1.0 peer %s closed the connection: %s',
                    self.current_host, why)
        self.last_error = '%s: %s' % (self.current_host, why)
        if condition is not None and 'unauthorized' in str(condition.name):
            self.auth_error = self.params.auth_text(self.current_host, why)
            LOG.error('%s', self.auth_error)
        self._event('lost')

    def connection_closed(self, connection) -> None:
        if connection is self.conn:
            self._event('lost')

    def sasl_done(self, connection, pn_sasl, result) -> None:
        if result != proton.SASL.OK:
            self.auth_error = self.params.auth_text(
                self.current_host, connparams.SASL_OUTCOMES.get(
                    result, 'SASL outcome %s' % result))
            LOG.error('%s', self.auth_error)
            # the peer may keep the socket open: fail the callers now
            self.loop.call_soon(self._auth_failed, connection)

    def _auth_failed(self, connection) -> None:
        if connection is self.conn:
            self._event('lost')

    # ------------------------------------------------------------------
    # the socket, as the pump (connio.SocketPump) reports it
    # ------------------------------------------------------------------

    def socket_failed(self, error) -> None:
        """The socket broke or the peer closed it (I/O thread)."""
        conn = self.conn
        LOG.debug('socket to %s: %s', self.current_host, error)
        self.last_error = '%s: %s' % (self.current_host, error)
        if conn is not None:
            conn.close_input()
            conn.close_output()
        self.pump.close()
        self.loop.remove_connection(self.pump)
        if self.state in (CONNECTING, ACTIVE):
            if self.state == ACTIVE:
                LOG.warning('Lost the AMQP 1.0 connection to %s: %s',
                            self.current_host, error)
            self._event('lost')

    # ------------------------------------------------------------------
    # shutdown
    # ------------------------------------------------------------------

    def _shutdown(self, waiter) -> None:
        self.state = CLOSED
        self.sends.fail_pending(_CLEANED_UP)
        self.replies.fail_all(_CLEANED_UP)
        self.sends.shutdown(_CLEANED_UP)
        conn = self.conn
        if conn is not None:
            try:
                conn.close()
                # push the close frames out before the socket goes
                self.pump.io_write()
            except Exception:
                pass
        self._discard_connection()
        waiter.set()
