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

"""Fixtures for the driver's unit tests: peers, config, transports, servers.

Every test gets a private ``ConfigOpts`` with oslo.messaging's own options
registered (``ConfFixture`` registers them, tracing and metrics included)
and the driver's options set for speed: one-second link and connection
retries.  Transports, RPC servers and notification listeners made through
these fixtures are stopped and cleaned up after the test.
"""

import warnings

# the deprecation noise of oslo.messaging's dependencies, at import time
# (these imports) and at run time (executor= argument, fork under eventlet)
_NOISE = ('(?s).*Eventlet is deprecated',
          'eventletutils module is deprecated',
          "The 'oslo_service.eventlet_backdoor' module",
          "Using the 'executor' argument is deprecated",
          r'Using fork\(\) is a bad idea')
for _message in _NOISE:
    warnings.filterwarnings('ignore', message=_message)

from futurist import _thread as futurist_thread  # noqa: E402
from oslo_config import cfg  # noqa: E402
import oslo_messaging as om  # noqa: E402
from oslo_messaging import conffixture  # noqa: E402
import pytest  # noqa: E402

from oslo_messaging_amqp1 import opts as amqp_opts  # noqa: E402
from tests import peers  # noqa: E402
from tests.unit import helpers  # noqa: E402

GROUP = amqp_opts.GROUP
FAST = {
    'link_retry_delay': 1,
    'connection_retry_interval': 1,
    'connection_retry_backoff': 0,
    'connection_retry_interval_max': 1,
    'default_notify_timeout': 5,
    'default_send_timeout': 5,
    'default_reply_timeout': 5,
}


def pytest_configure(config):
    """The same filters for the tests themselves (pytest resets them)."""
    for message in _NOISE:
        config.addinivalue_line('filterwarnings', 'ignore:%s' % message)


@pytest.fixture(autouse=True)
def quick_executor_shutdown(monkeypatch):
    """Idle executor workers notice a shutdown in 0.1 s instead of 1 s.

    futurist's worker threads poll their queue once a second, which made
    every RPC server's wait() take a second.
    """
    monkeypatch.setattr(futurist_thread.ThreadWorker, 'MAX_IDLE_FOR', 0.1)


@pytest.fixture
def make_peer():
    """make_peer(kind='router', **kwargs): a started tests.peers.Peer."""
    started = []

    def make(kind='router', **kwargs):
        peer = peers.Peer(kind, **kwargs).start()
        started.append(peer)
        return peer
    yield make
    for peer in started:
        peer.stop()


@pytest.fixture
def router(make_peer):
    return make_peer('router')


@pytest.fixture
def broker(make_peer):
    return make_peer('broker')


@pytest.fixture
def conf():
    """A private ConfigOpts with oslo.messaging and driver options."""
    conf = cfg.ConfigOpts()
    conf([], project='amqp1-unit-tests')
    conffixture.ConfFixture(conf)   # registers tracing, metrics, ...
    amqp_opts.register(conf)
    # Notifier targets name no exchange: the tables' examples use nova
    conf.set_override('control_exchange', 'nova')
    for name, value in FAST.items():
        conf.set_override(name, value, group=GROUP)
    yield conf
    conf.reset()


@pytest.fixture
def messaging(conf, make_peer):
    """Factory of transports, servers, clients and listeners.

    Everything it makes is torn down at the end of the test, servers first,
    and before the peers stop (hence the make_peer dependency).
    """
    kit = _Kit(conf)
    yield kit
    kit.close()


class _Kit(object):

    def __init__(self, conf):
        self.conf = conf
        self._transports = []
        self._servers = []

    def set(self, **overrides):
        """Override [oslo_messaging_amqp] options (before a transport)."""
        for name, value in overrides.items():
            self.conf.set_override(name, value, group=GROUP)

    def transport(self, target, **overrides):
        """An RPC transport to a peer or URL."""
        self.set(**overrides)
        url = target if isinstance(target, str) else helpers.url_of(target)
        transport = om.get_rpc_transport(self.conf, url)
        self._transports.append(transport)
        return transport

    def notification_transport(self, target, **overrides):
        self.set(**overrides)
        url = target if isinstance(target, str) else helpers.url_of(target)
        transport = om.get_notification_transport(self.conf, url)
        self._transports.append(transport)
        return transport

    def server(self, transport, topic='compute', server='host1',
               exchange='nova', endpoints=None, start=True):
        """A started threading RPC server; returns (server, endpoint)."""
        endpoint = helpers.Echo()
        target = om.Target(topic=topic, server=server, exchange=exchange)
        srv = om.get_rpc_server(transport, target,
                                endpoints or [endpoint],
                                executor='threading')
        if start:
            srv.start()
        self._servers.append(srv)
        return srv, endpoint

    def client(self, transport, topic='compute', exchange='nova',
               timeout=5, **kwargs):
        return om.get_rpc_client(
            transport, om.Target(topic=topic, exchange=exchange, **kwargs),
            timeout=timeout)

    def listener(self, transport, endpoint, topic='notifications',
                 exchange=None, pool=None, batch=False):
        """A started notification listener on topic.info etc."""
        targets = [om.Target(topic=topic, exchange=exchange)]
        if batch:
            srv = om.get_batch_notification_listener(
                transport, targets, [endpoint], executor='threading',
                pool=pool, batch_size=2, batch_timeout=1)
        else:
            srv = om.get_notification_listener(
                transport, targets, [endpoint], executor='threading',
                pool=pool)
        srv.start()
        self._servers.append(srv)
        return srv

    def close(self):
        for srv in reversed(self._servers):
            try:
                srv.stop()
                srv.wait()
            except Exception:
                pass
        for transport in reversed(self._transports):
            transport.cleanup()
