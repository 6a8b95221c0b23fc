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

"""pytest plugin: delete the RabbitMQ queues a test session declared.

Topic, server and notification queues are durable by design (a service
restart or a broker restart must not lose what they hold), so every test
that uses a fresh topic leaves queues behind.  Over many runs a test
broker collects thousands of them, and a RabbitMQ whose file limit is
lower than its queue count then hangs while recovering them at boot.

This plugin records the queues the driver declares in this process and
deletes them over AMQP 0-9-1 when the session ends: declarations made by
the 3.x declarer on the broker that got them, those made through 4.x's
``/management`` on the RabbitMQ URLs of the environment
(``AMQP1_TEST_RABBIT_URL``, ``RPC_TRANSPORT_URL``,
``NOTIFY_TRANSPORT_URL``).  ``tools/run-tests`` (functional and oslo
steps) and ``tools/fault-report`` load it with ``-p tests.rabbit_cleanup``;
a test's child process calls :func:`start` and :func:`finish` itself.
"""

import logging
import os
import urllib.parse

from oslo_messaging_amqp1 import addressing
from oslo_messaging_amqp1 import topology

LOG = logging.getLogger(__name__)
URL_VARIABLES = ('AMQP1_TEST_RABBIT_URL', 'RPC_TRANSPORT_URL',
                 'NOTIFY_TRANSPORT_URL')
# (host, port, username, password, vhost) -> queue names; None: env URLs
_DECLARED = {}
_ORIGINAL = {}


def _broker(params):
    return (params['host'], params['port'], params.get('username'),
            params.get('password'), params.get('vhost') or '/')


def _env_brokers():
    """The RabbitMQ brokers of the environment's amqp:// URLs."""
    brokers = set()
    for variable in URL_VARIABLES:
        url = os.environ.get(variable)
        if not url or not url.startswith(('amqp:', 'amqp1:')):
            continue
        for part in urllib.parse.urlsplit(url).netloc.split(','):
            host = urllib.parse.urlsplit('//' + part)
            brokers.add((host.hostname, host.port or 5672,
                         urllib.parse.unquote(host.username or 'guest'),
                         urllib.parse.unquote(host.password or 'guest'),
                         '/'))
    return brokers


def _record(key, ops):
    names = _DECLARED.setdefault(key, set())
    names.update(op.name for op in ops if isinstance(op, addressing.Queue))


def _management_declare(self, ops, done):
    _record(None, ops)
    return _ORIGINAL['management'](self, ops, done)


def _amqp_declare(self, ops, done):
    _record(_broker(self._params), ops)
    return _ORIGINAL['amqp'](self, ops, done)


def delete_queues(broker, names) -> int:
    """Delete queues by name over AMQP 0-9-1; returns how many went."""
    import amqp
    host, port, username, password, vhost = broker
    conn = amqp.Connection(host='%s:%s' % (host, port), userid=username,
                           password=password, virtual_host=vhost,
                           connect_timeout=5)
    deleted = 0
    try:
        conn.connect()
        channel = conn.channel()
        for name in sorted(names):
            channel.queue_delete(name)
            deleted += 1
    finally:
        conn.close()
    return deleted


def start() -> None:
    """Record the queues the driver's declarers declare from now on."""
    if _ORIGINAL:
        return
    _ORIGINAL['management'] = topology.ManagementDeclarer.declare
    _ORIGINAL['amqp'] = topology.AmqpDeclarer.declare
    topology.ManagementDeclarer.declare = _management_declare
    topology.AmqpDeclarer.declare = _amqp_declare


def finish() -> None:
    """Delete what was recorded; a broker that is gone is skipped."""
    if not _ORIGINAL:
        return
    topology.ManagementDeclarer.declare = _ORIGINAL.pop('management')
    topology.AmqpDeclarer.declare = _ORIGINAL.pop('amqp')
    declared = dict(_DECLARED)
    _DECLARED.clear()
    env_names = declared.pop(None, set())
    if env_names:
        for broker in _env_brokers():
            declared.setdefault(broker, set()).update(env_names)
    for broker, names in declared.items():
        try:
            count = delete_queues(broker, names)
        except Exception as exc:
            LOG.warning('could not delete %d test queues on %s:%s: %s',
                        len(names), broker[0], broker[1], exc)
        else:
            LOG.info('deleted %d test queues on %s:%s', count, broker[0],
                     broker[1])


def pytest_configure(config) -> None:
    """Session start: record declarations."""
    start()


def pytest_unconfigure(config) -> None:
    """Session end: delete the recorded queues."""
    finish()
