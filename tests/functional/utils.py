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

"""Our driver through the public oslo.messaging API, for functional tests.

:func:`make_conf` builds a private ConfigOpts that oslo.messaging 18 accepts:
its RPC client reads ``[oslo_messaging_tracing]`` and
``[oslo_messaging_metrics]`` options that it registers on ``cfg.CONF`` only,
at import time; oslo.messaging's own ``ConfFixture(conf)`` registers all of
its options on any ConfigOpts. Timeouts are small enough for tests.

:class:`Node` is one process's worth of oslo.messaging: transports, RPC
servers, notification listeners and what their endpoints received.
"""

import threading
import time
import urllib.parse
import uuid

from oslo_config import cfg
import oslo_messaging as om
from oslo_messaging import conffixture as om_conffixture
from proton import utils as proton_utils

from oslo_messaging_amqp1 import opts as amqp_opts
from tests.functional.endpoints import Endpoint  # noqa: F401
from tests.functional.endpoints import NotifyContext  # noqa: F401
from tests.functional.endpoints import NotifyEndpoint  # noqa: F401
from tests.functional.endpoints import Recorder  # noqa: F401

# [oslo_messaging_amqp] values that keep every test within a few seconds
FAST = {
    'link_retry_delay': 1,
    'connection_retry_interval': 1,
    'connection_retry_backoff': 0,
    'connection_retry_interval_max': 1,
    'default_reply_timeout': 5,
    'default_send_timeout': 5,
    'default_notify_timeout': 5,
}


def make_conf(**overrides) -> cfg.ConfigOpts:
    """A fresh ConfigOpts for one transport, with FAST and overrides."""
    conf = cfg.ConfigOpts()
    conf([], project='amqp1-functional', default_config_files=[],
         default_config_dirs=[])
    # registers every option of oslo.messaging on conf (its constructor
    # does; setUp would only add cleanups for a testtools test case)
    om_conffixture.ConfFixture(conf)
    amqp_opts.register(conf)
    for name, value in dict(FAST, **overrides).items():
        conf.set_override(name, value, group='oslo_messaging_amqp')
    return conf


def raw_connection(url: str, timeout: float = 10.0):
    """A plain proton BlockingConnection to url, with its user if it has one.

    Proton uses PLAIN on a connection without TLS only when asked to
    (``allow_insecure_mechs``); with the 0.40.0 wheel and no mechanism
    named, RabbitMQ answered "Authentication failed [mech=none]".
    """
    options = {}
    if urllib.parse.urlsplit(url).username:
        options = dict(allowed_mechs='PLAIN', allow_insecure_mechs=True)
    return proton_utils.BlockingConnection(url.rstrip('/'), timeout=timeout,
                                           **options)


def unique(prefix: str) -> str:
    """A name no other test uses (topics, servers, event types)."""
    return '%s-%s' % (prefix, uuid.uuid4().hex[:8])


class Node(object):
    """Transports, servers and listeners of our driver on one URL."""

    def __init__(self, url, exchange='functional', **overrides):
        self.url = url
        self.exchange = exchange
        self.conf = make_conf(**overrides)
        self.recorder = Recorder()
        self.transport = om.get_rpc_transport(self.conf, url=url)
        self.notify_transport = om.get_notification_transport(self.conf,
                                                              url=url)
        self._running = []

    @property
    def driver(self):
        return self.transport._driver

    def target(self, topic, server=None, fanout=False, exchange=None):
        return om.Target(exchange=exchange or self.exchange, topic=topic,
                         server=server, fanout=fanout)

    def client(self, topic, server=None, fanout=False, timeout=5,
               retry=None, **kwargs):
        return om.get_rpc_client(self.transport,
                                 self.target(topic, server, fanout),
                                 timeout=timeout, retry=retry, **kwargs)

    def server(self, topic, name, recorder=None):
        """Start an RPC server; its endpoint records into recorder."""
        recorder = recorder or self.recorder
        server = om.get_rpc_server(
            self.transport, self.target(topic, name),
            [Endpoint(recorder, name)], executor='threading')
        server.start()
        self._running.append(server)
        return server

    def listener(self, topic, pool=None, kind='notify', exchange=None):
        """Start a notification listener on topic (all priorities)."""
        listener = om.get_notification_listener(
            self.notify_transport, [om.Target(topic=topic,
                                              exchange=exchange)],
            [NotifyEndpoint(self.recorder, kind)], executor='threading',
            pool=pool)
        listener.start()
        self._running.append(listener)
        return listener

    def notifier(self, topic, publisher_id='functional', retry=None):
        return om.Notifier(self.notify_transport, publisher_id=publisher_id,
                           driver='messagingv2', topics=[topic], retry=retry)

    def stop(self, thing):
        thing.stop()
        thing.wait()
        if thing in self._running:
            self._running.remove(thing)

    def cleanup(self):
        for thing in list(self._running):
            try:
                self.stop(thing)
            except Exception:
                pass
        self.transport.cleanup()
        self.notify_transport.cleanup()


def wait_ready(client, method='echo', timeout=10.0, **kwargs):
    """Call until a server answers (links attach asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.prepare(timeout=2).call({}, method, **kwargs)
        except om.MessagingTimeout:
            if time.monotonic() > deadline:
                raise


def wait_fanout_ready(cast_probe, recorder_wait, timeout=10.0):
    """Fanout: a subscriber that is not attached yet misses the message.

    Send probes (cast_probe(token)) until recorder_wait(token) sees one, so
    that the fanout link is known to be attached before the real test.
    """
    deadline = time.monotonic() + timeout
    sent = set()
    while time.monotonic() < deadline:
        token = uuid.uuid4().hex
        sent.add(token)
        cast_probe(token)
        if sent.intersection(recorder_wait(0.5)):
            return
    raise AssertionError('no fanout probe arrived within %ss' % timeout)


class Caller(threading.Thread):
    """Calls echo in a loop; records (start, end, ok) of every call.

    ``errors`` holds (start, exception text) of each failed call.
    """

    def __init__(self, client, stop) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.stop = stop
        self.calls = []
        self.errors = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            start = time.monotonic()
            try:
                ok = self.client.call({}, 'echo', value=n)['echo'] == n
            except (om.MessagingTimeout, om.MessageDeliveryFailure) as e:
                ok = False
                self.errors.append((start, '%s: %s' % (type(e).__name__, e)))
                time.sleep(0.05)
            self.calls.append((start, time.monotonic(), ok))
