# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The oslo.messaging driver registered as ``amqp``.

Thin: it turns BaseDriver calls into SendTasks and Subscriptions for the
controller; listening.py turns what arrives back into IncomingMessages.
It never touches proton links itself.
"""

import functools
import threading

import oslo_messaging as om
from oslo_messaging._drivers import base

from oslo_messaging_amqp1 import addressing
from oslo_messaging_amqp1 import codec
from oslo_messaging_amqp1 import controller
from oslo_messaging_amqp1 import eventloop
from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import listening
from oslo_messaging_amqp1 import opts
from oslo_messaging_amqp1 import pacing
from oslo_messaging_amqp1 import tasks

LOG = green.IOLogger(__name__)
# how much longer than its own timeout a caller waits for the I/O thread
_GRACE = 2.0


class ProtonDriver(base.BaseDriver):
    """AMQP 1.0 for oslo.messaging: routers, brokers and RabbitMQ."""

    def __init__(self, conf, url, default_exchange=None,
                 allowed_remote_exmods=None) -> None:
        opts.register(conf)
        super().__init__(conf, url, default_exchange,
                         allowed_remote_exmods or [])
        self._opts = conf.oslo_messaging_amqp
        # read every option now: a bad value in a config file fails here,
        # not later on the I/O thread
        for opt in opts.amqp1_opts:
            getattr(self._opts, opt.dest)
        _check_url(url)
        self._pre_settled = _check_pre_settled(self._opts.pre_settled)
        self._window = (eventloop.Window(self._opts.send_window)
                        if self._opts.send_window else None)
        self._casts = pacing.CastPacer(self._window is not None)
        self._proven = set()  # targets a send went through to
        self._ctl = None
        self._pid = None
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------

    def _controller(self) -> controller.Controller:
        """The controller of this process (a fresh one after fork)."""
        pid = green.pid()
        ctl = self._ctl
        if ctl is not None and self._pid == pid:
            return ctl
        with self._lock:
            if self._ctl is None or self._pid != pid:
                if self._ctl is not None:
                    LOG.debug('process forked: new AMQP 1.0 connection')
                    # the parent's outstanding sends are not this process's
                    if self._window is not None:
                        self._window = eventloop.Window(self._window.size)
                        self._casts = pacing.CastPacer(True)
                    # nor has this one's connection sent to any target yet
                    self._proven = set()
                self._ctl = controller.Controller(
                    self.conf, self._url, self._default_exchange)
                self._pid = pid
            return self._ctl

    def _run(self, task: tasks.SendTask):
        self._controller().submit(task)
        result = task.waiter.wait(task.timeout + _GRACE)
        if not task.waiter.done():
            raise om.MessagingTimeout('Timed out after %ss sending %s' %
                                      (task.timeout, task.label))
        return result

    def _run_windowed(self, task: tasks.SendTask, key=None,
                      window: eventloop.Window = None) -> None:
        """Hand task to the I/O thread and return (see send_window).

        Only while connected and, with a key, once a send to the same key
        went through: the first send to a target, and every send while the
        bus is down, waits as in :meth:`_run`, so that a refusal or a wrong
        password reaches the caller; a windowed send that fails is logged
        and makes the next send to its key wait again.
        """
        if window is None:
            window = self._window
        ctl = self._controller()
        if (window is None or not ctl.active or
                (key is not None and key not in self._proven) or
                not window.acquire(task.timeout + _GRACE)):
            self._run(task)
            if key is not None:
                self._proven.add(key)
            return
        task.on_done = functools.partial(self._windowed_done, window, key)
        ctl.submit(task)

    def _windowed_done(self, window, key, task, error) -> None:
        window.release()
        if error is not None:
            self._proven.discard(key)
            LOG.error('Could not send the %s: %s', task.label, error)

    def flush(self, timeout: float = None) -> bool:
        """Wait until every windowed send has finished; False on timeout."""
        if self._window is None:
            return True
        deadline = None if timeout is None else eventloop.now() + timeout
        return (self._window.drain(timeout) and self._casts.drain(
            None if deadline is None else deadline - eventloop.now()))

    def send_raw(self, address: str, message, kind: str) -> None:
        """Send a reply or heartbeat to a reply address; never raises."""
        timeout = self._opts.default_reply_timeout
        task = tasks.SendTask(
            lambda a: addressing.Route(address), message, timeout,
            self._opts.default_reply_retry,
            kind == 'heartbeat' or 'rpc-reply' in self._pre_settled,
            label='%s to %s' % (kind, address))
        try:
            self._run_windowed(task)
        except Exception as exc:
            LOG.warning('Could not send the %s to %s: %s', kind, address,
                        exc)

    # -- BaseDriver ------------------------------------------------------

    def require_features(self, requeue=False) -> None:
        """Requeue is supported: the delivery is released."""

    def send(self, target, ctxt, message, wait_for_reply=None, timeout=None,
             call_monitor_timeout=None, retry=None, transport_options=None):
        """Cast or call target."""
        if timeout is None:
            timeout = (self._opts.default_reply_timeout if wait_for_reply
                       else self._opts.default_send_timeout)
        msg = codec.encode_request(ctxt, message,
                                   call_monitor_timeout=call_monitor_timeout,
                                   timeout=timeout)
        kind = 'call' if wait_for_reply else 'cast'
        if wait_for_reply:
            msg.id = codec.new_message_id()
        task = tasks.SendTask(
            lambda a: a.send_route('rpc', target), msg, timeout, retry,
            ('rpc-call' if wait_for_reply else 'rpc-cast') in
            self._pre_settled, is_call=bool(wait_for_reply),
            monitor=call_monitor_timeout if wait_for_reply else None,
            label='%s %s to %s' % (kind, message.get('method'), target))
        if not wait_for_reply:
            if task.presettled:
                self._cast_presettled(task, target)
            else:
                # unsettled: the peer's outcomes pace the window
                self._run_windowed(task, _cast_key(target))
            return None
        reply = self._run(task)
        try:
            result, failure = codec.decode_reply(
                reply, self._allowed_remote_exmods)
        except codec.DecodeError as exc:
            LOG.warning('Malformed reply to %s: %s', task.label, exc)
            raise om.MessageDeliveryFailure(
                'malformed reply to %s: %s' % (task.label, exc))
        if failure is not None:
            raise failure
        return result

    def _cast_presettled(self, task: tasks.SendTask, target) -> None:
        """Send a pre-settled cast: wait until it is written, unless early.

        Nothing from the peer paces a pre-settled cast. Handed over without
        waiting and without bound, casts sent back to back filled the
        socket and RabbitMQ ahead of the same connection's calls (soak: 30
        calls in 600 s, the rest timed out) and outran a router, which
        drops what its consumer has no credit for. So a cast waits for the
        I/O thread to write it, unless :class:`pacing.CastPacer` lets it go
        on early: then it takes one of a few slots, freed as the I/O
        thread hands the casts to proton.
        """
        ctl = self._controller()
        key = _cast_key(target)
        casts = self._casts
        if casts.early(ctl):
            self._run_windowed(task, key, casts.slot)
        else:
            self._run(task)
            self._proven.add(key)

    def send_notification(self, target, ctxt, message, version, retry=None):
        """Send a notification (durable) to target."""
        msg = codec.encode_request(ctxt, message,
                                   use_envelope=(version == 2.0))
        msg.durable = True
        task = tasks.SendTask(
            lambda a: a.send_route('notify', target), msg,
            self._opts.default_notify_timeout, retry,
            'notify' in self._pre_settled,
            label='notification to %s' % target.topic)
        self._run_windowed(task, ('notify', target.exchange, target.topic))

    def listen(self, target, batch_size, batch_timeout):
        """An RPC server's listener: topic, topic+server and fanout."""
        ctl = self._controller()
        listener = listening.ProtonListener(
            self, ctl, lambda a: a.rpc_listen(target),
            self._opts.rpc_server_credit, 'RPC server %s' % target)
        return base.PollStyleListenerAdapter(listener, batch_size,
                                             batch_timeout)

    def listen_for_notifications(self, targets_and_priorities, pool,
                                 batch_size, batch_timeout):
        """A notification listener; listeners of one pool share."""
        ctl = self._controller()
        targets = [om.Target(exchange=t.exchange,
                             topic='%s.%s' % (t.topic, priority))
                   for t, priority in targets_and_priorities]

        def routes(addresser):
            if pool and not addresser.pools:
                LOG.warning('Pool %s: %s addressing cannot give each pool '
                            'its own copy; all listeners share the '
                            'notifications', pool, addresser.mode)
            return [addresser.notify_listen(t, pool) for t in targets]
        listener = listening.ProtonListener(
            self, ctl, routes, self._opts.notify_server_credit,
            'notification listener %s' % [t.topic for t in targets],
            rpc=False)
        return base.PollStyleListenerAdapter(listener, batch_size,
                                             batch_timeout)

    def cleanup(self) -> None:
        """Finish windowed sends, close the connection, stop the I/O."""
        if self._ctl is not None and not self.flush(
                self._opts.default_send_timeout):
            LOG.warning('%d sends were still outstanding at cleanup',
                        len(self._window))
        with self._lock:
            ctl, self._ctl = self._ctl, None
        if ctl is not None and self._pid == green.pid():
            ctl.shutdown()


def _cast_key(target) -> tuple:
    """The key of a cast's target in the proven set."""
    return ('cast', target.exchange, target.topic, target.server,
            target.fanout)


def _check_url(url) -> None:
    """Fail fast on a transport URL that cannot work."""
    for host in url.hosts:
        if host.port is not None and not 0 < int(host.port) < 65536:
            raise om.InvalidTransportURL(
                str(url), 'port %s of host %s is out of range' %
                (host.port, host.hostname))
        if host.password and not host.username:
            raise om.InvalidTransportURL(
                str(url), 'a password without a user name: use '
                'amqp://USER:PASSWORD@HOST:PORT/')


def _check_pre_settled(values) -> set:
    """Validate [oslo_messaging_amqp] pre_settled."""
    chosen = set()
    for value in values or []:
        if value not in opts.PRE_SETTLED_TYPES:
            raise ValueError(
                '[oslo_messaging_amqp] pre_settled: unknown message type '
                '%r; use one of %s' %
                (value, ', '.join(opts.PRE_SETTLED_TYPES)))
        chosen.add(value)
    return chosen
