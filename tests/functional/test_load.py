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

"""Load on a real RabbitMQ (a throwaway node, see rabbitnode.py).

* 1,000 calls in flight at once from one transport to 10 servers: every
  one answered with its own reply;
* 100 RPC servers on one transport, each reached by a call to it;
* a soak of mixed traffic (calls, casts, fanout, notifications) for
  ``AMQP1_SOAK_SECONDS`` (default 60; ``tools/run-tests`` runs 600): RSS
  grows less than 10% after the first tenth, the open links not at all.
"""

import logging
import os
import resource
import threading
import time

import oslo_messaging as om
from oslo_messaging_amqp1 import pyngus_compat

from tests.functional import utils

IN_FLIGHT = 1000
SERVERS = 10
MANY_SERVERS = 100


class _GatedEndpoint:
    """echo once the gate opens, so that calls pile up in flight."""

    def __init__(self, name, gate) -> None:
        self.name = name
        self.gate = gate

    def echo(self, ctxt, value):
        self.gate.wait(60)
        return {'echo': value, 'server': self.name}


def test_thousand_calls_in_flight(rabbit_nodes, report):
    rabbit = rabbit_nodes.node()
    topic = utils.unique('inflight')
    servers = utils.Node(rabbit.url, default_reply_timeout=60)
    clients = utils.Node(rabbit.url)
    results = {}
    gate = threading.Event()
    try:
        for n in range(SERVERS):
            server = om.get_rpc_server(
                servers.transport, servers.target(topic, 'srv%d' % n),
                [_GatedEndpoint('srv%d' % n, gate)], executor='threading')
            server.start()
            servers._running.append(server)
        client = clients.client(topic, timeout=60)
        gate.set()
        utils.wait_ready(client, value=-1)
        gate.clear()

        def call(n):
            try:
                results[n] = client.call({}, 'echo', value=n)
            except Exception as exc:
                results[n] = exc

        threads = [threading.Thread(target=call, args=(n,), daemon=True)
                   for n in range(IN_FLIGHT)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        # calls sent and waiting for their reply, as the driver counts them
        calls = clients.transport._driver._ctl.replies.calls
        in_flight = 0
        deadline = time.monotonic() + 60
        while in_flight < IN_FLIGHT and time.monotonic() < deadline:
            in_flight = max(in_flight, len(calls))
            time.sleep(0.01)
        gate.set()
        for thread in threads:
            thread.join(120)
        elapsed = time.monotonic() - start
    finally:
        gate.set()
        clients.cleanup()
        servers.cleanup()
    answered = [n for n, r in results.items() if isinstance(r, dict)]
    mixed = [n for n in answered if results[n]['echo'] != n]
    used = {results[n]['server'] for n in answered}
    report('load: calls in flight at once (max)', in_flight,
           limit='>= %d' % IN_FLIGHT)
    report('load: calls answered', len(answered), limit='%d' % IN_FLIGHT)
    report('load: replies matching another request', len(mixed), limit='0')
    report('load: servers that answered', len(used))
    report('load: time for %d calls' % IN_FLIGHT, round(elapsed, 2), 's')
    assert in_flight >= IN_FLIGHT
    assert len(answered) == IN_FLIGHT, [
        r for r in results.values() if not isinstance(r, dict)][:3]
    assert not mixed
    assert used == {'srv%d' % n for n in range(SERVERS)}


def test_hundred_servers_on_one_transport(rabbit_nodes, report):
    rabbit = rabbit_nodes.node()
    topic = utils.unique('many')
    node = utils.Node(rabbit.url, default_reply_timeout=30)
    try:
        start = time.monotonic()
        for n in range(MANY_SERVERS):
            node.server(topic, 'srv%d' % n)
        started = time.monotonic() - start
        answers = []
        start = time.monotonic()
        for n in range(MANY_SERVERS):
            client = node.client(topic, server='srv%d' % n, timeout=30)
            answers.append(utils.wait_ready(client, value=n, timeout=60))
        answered = time.monotonic() - start
    finally:
        node.cleanup()
    report('100 servers on one transport: start', round(started, 2), 's')
    report('100 servers: one call to each', round(answered, 2), 's')
    assert [a['server'] for a in answers] == [
        'srv%d' % n for n in range(MANY_SERVERS)]
    assert [a['echo'] for a in answers] == list(range(MANY_SERVERS))


def _rss_kb() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _links(*nodes) -> int:
    count = 0
    for node in nodes:
        for transport in (node.transport, node.notify_transport):
            ctl = transport._driver._ctl
            conn = ctl.conn if ctl is not None else None
            if conn is not None:
                count += pyngus_compat.link_count(conn)
    return count


def test_soak_mixed_traffic(rabbit_nodes, report, caplog):
    seconds = float(os.environ.get('AMQP1_SOAK_SECONDS', '60'))
    rabbit = rabbit_nodes.node()
    topic = utils.unique('soak')
    servers = utils.Node(rabbit.url)
    clients = utils.Node(rabbit.url)
    stop = threading.Event()
    counts = {'call': 0, 'cast': 0, 'fanout': 0, 'notify': 0, 'error': 0}
    try:
        # calls on their own topic: casts queued ahead would delay them
        servers.server(topic, 'a')
        servers.server(topic + '-casts', 'b')
        servers.listener(topic)
        call = clients.client(topic, timeout=10)
        cast = clients.client(topic + '-casts')
        utils.wait_ready(call, value=0)
        fanout = clients.client(topic, fanout=True)
        notifier = clients.notifier(topic)

        def traffic(kind, send):
            # paced (1 ms apart) so that the consumers keep up: a soak
            # measures this process over time, not a growing backlog
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    send(n)
                    counts[kind] += 1
                except Exception:
                    counts['error'] += 1
                    time.sleep(0.1)
                time.sleep(0.001)

        def drain():
            while not stop.is_set():
                for kind in ('call', 'cast', 'fanout', 'notify'):
                    servers.recorder.wait(kind, 10 ** 9, 0)
                time.sleep(0.5)

        senders = [
            threading.Thread(target=traffic, args=(
                'call', lambda n: call.call({}, 'echo', value=n))),
            threading.Thread(target=traffic, args=(
                'cast', lambda n: cast.cast({}, 'record', value=n))),
            threading.Thread(target=traffic, args=(
                'fanout', lambda n: (fanout.cast({}, 'fanned', value=n),
                                     time.sleep(0.009)))),
            threading.Thread(target=traffic, args=(
                'notify', lambda n: notifier.info({}, 'soak', {'n': n}))),
            threading.Thread(target=drain)]
        for thread in senders:
            thread.daemon = True
            thread.start()
        time.sleep(seconds / 10)
        rss_warm, links_warm = _rss_kb(), _links(servers, clients)
        time.sleep(seconds - seconds / 10)
        rss_end, links_end = _rss_kb(), _links(servers, clients)
        stop.set()
        for thread in senders:
            thread.join(15)
    finally:
        stop.set()
        clients.cleanup()
        servers.cleanup()
    growth = 100.0 * (rss_end - rss_warm) / rss_warm
    total = sum(v for k, v in counts.items() if k != 'error')
    report('soak: duration', int(seconds), 's')
    report('soak: messages sent (calls, casts, fanouts, notifications)',
           '%d (%d/%d/%d/%d)' % (total, counts['call'], counts['cast'],
                                 counts['fanout'], counts['notify']))
    report('soak: errors', counts['error'], limit='0')
    # a windowed send (notification, early cast) fails after its caller
    # returned: logged, not raised
    late = [r for r in caplog.records if r.levelno >= logging.ERROR and
            r.name == 'oslo_messaging_amqp1.driver']
    report('soak: sends that failed after their caller returned (logged)',
           len(late))
    report('soak: RSS after the first tenth / at the end',
           '%d / %d' % (rss_warm // 1024, rss_end // 1024), 'MB')
    report('soak: RSS growth', round(growth, 1), '%', limit='< 10')
    report('soak: open links after the first tenth / at the end',
           '%d / %d' % (links_warm, links_end), limit='no growth')
    assert counts['error'] == 0
    assert growth < 10.0
    assert links_end <= links_warm
