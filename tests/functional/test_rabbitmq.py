# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The driver against a real RabbitMQ, through oslo.messaging's public API.

Set AMQP1_TEST_RABBIT_URL to the AMQP 1.0 listener of a RabbitMQ 3.x
(rabbitmq_amqp1_0 enabled) or 4.x node, e.g. amqp://guest:guest@127.0.0.1:5672/
(tools/run-tests runs this module once per node it finds).
"""

import collections
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

from oslo_config import cfg
import oslo_messaging as om
import proton
import pytest

from oslo_messaging_amqp1 import opts
from oslo_messaging_amqp1 import pyngus_compat
from oslo_messaging_amqp1 import replies
from tests.functional import utils

URL = os.environ.get('AMQP1_TEST_RABBIT_URL')
REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif(
    not URL, reason='AMQP1_TEST_RABBIT_URL is not set (no RabbitMQ)')


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _topic():
    return 'ft-' + uuid.uuid4().hex[:10]


class Recorder:
    """An RPC endpoint that remembers what it was asked."""

    def __init__(self, name='srv'):
        self.name = name
        self.seen = []
        self.lock = threading.Lock()

    def echo(self, ctxt, value):
        with self.lock:
            self.seen.append(value)
        return {'server': self.name, 'value': value}

    def note(self, ctxt, value):
        with self.lock:
            self.seen.append(value)

    def fail(self, ctxt):
        raise ValueError('expected failure')

    def sleep(self, ctxt, seconds):
        time.sleep(seconds)
        return seconds


@pytest.fixture
def conf():
    cfg.CONF([], project='amqp1-functional')
    opts.register(cfg.CONF)
    cfg.CONF.set_override('link_retry_delay', 1, group='oslo_messaging_amqp')
    yield cfg.CONF
    cfg.CONF.clear_override('link_retry_delay', group='oslo_messaging_amqp')


@pytest.fixture
def bus(conf):
    """Make transports, servers and listeners; clean all up afterwards."""
    made = {'transports': [], 'servers': []}

    class Bus:
        url = URL

        def transport(self, url=URL):
            t = om.get_rpc_transport(conf, url)
            made['transports'].append(t)
            return t

        def notify_transport(self, url=URL):
            t = om.get_notification_transport(conf, url)
            made['transports'].append(t)
            return t

        def server(self, transport, target, endpoint):
            s = om.get_rpc_server(transport, target, [endpoint],
                                  executor='threading')
            s.start()
            made['servers'].append(s)
            return s

        def listener(self, transport, targets, endpoint, pool=None,
                     batch=None):
            if batch:
                s = om.get_batch_notification_listener(
                    transport, targets, [endpoint], executor='threading',
                    pool=pool, batch_size=batch, batch_timeout=1)
            else:
                s = om.get_notification_listener(
                    transport, targets, [endpoint], executor='threading',
                    pool=pool, allow_requeue=True)
            s.start()
            made['servers'].append(s)
            return s

    yield Bus()
    for s in made['servers']:
        s.stop()
        s.wait()
    for t in made['transports']:
        t.cleanup()


def _ready(client):
    """A call that succeeds once the servers' links are attached."""
    assert client.prepare(timeout=20).call({}, 'echo', value='ready')


def test_call_cast_fanout_and_server(bus):
    topic = _topic()
    t = bus.transport()
    servers = [Recorder('s%d' % i) for i in range(3)]
    for i, ep in enumerate(servers):
        bus.server(t, om.Target(topic=topic, server='s%d' % i), ep)
    client = om.get_rpc_client(bus.transport(), om.Target(topic=topic),
                               timeout=20)
    for i in range(3):
        warm = client.prepare(server='s%d' % i, timeout=20)
        warm.call({}, 'echo', value='warm')
    reply = client.prepare(server='s1').call({}, 'echo', value=7)
    assert reply == {'server': 's1', 'value': 7}
    answered = collections.Counter(
        client.call({}, 'echo', value=n)['server'] for n in range(30))
    assert sum(answered.values()) == 30
    assert len(answered) >= 2, 'a topic call is shared by the servers'
    client.prepare(fanout=True).cast({}, 'note', value='to-all')
    client.prepare(server='s2').cast({}, 'note', value='to-s2')
    client.cast({}, 'note', value='to-one')
    assert _wait_for(lambda: all('to-all' in s.seen for s in servers))
    assert _wait_for(lambda: 'to-s2' in servers[2].seen)
    assert _wait_for(lambda: sum(s.seen.count('to-one')
                                 for s in servers) == 1)
    time.sleep(0.3)
    assert sum(s.seen.count('to-one') for s in servers) == 1
    assert 'to-s2' not in servers[0].seen + servers[1].seen


def test_more_links_than_rabbitmq4_allows_sessions(bus):
    """Over 64 links on one connection work.

    30 servers (90 receivers) on one transport, calls to each from one
    client (30 senders). RabbitMQ 4 accepts 64 sessions per connection
    and pyngus opens one per link; without sharing, the 64th link is never
    attached.
    """
    topic = _topic()
    t = bus.transport()
    for i in range(30):
        bus.server(t, om.Target(topic=topic, server='s%02d' % i),
                   Recorder('s%02d' % i))
    client = om.get_rpc_client(bus.transport(), om.Target(topic=topic),
                               timeout=30)
    answers = [client.prepare(server='s%02d' % i).call({}, 'echo', value=i)
               for i in range(30)]
    assert [a['server'] for a in answers] == ['s%02d' % i
                                              for i in range(30)]
    links = pyngus_compat.link_count(t._driver._ctl.conn)
    assert links >= 90, links


def test_stopped_server_frees_its_links(bus):
    """A stopped server's links are freed once the peer answers.

    RabbitMQ 3.x answers a link's close with a detach that is not a close.
    """
    topic = _topic()
    t = bus.transport()
    server = bus.server(t, om.Target(topic=topic, server='s'), Recorder('s'))
    _ready(om.get_rpc_client(t, om.Target(topic=topic, server='s')))
    ctl = t._driver._ctl
    [sub] = [sub for sub in ctl.receiving.subs if topic in sub.label]
    receivers = len(sub.links)
    assert receivers >= 2
    links = pyngus_compat.link_count(ctl.conn)
    server.stop()
    server.wait()
    # answered by the peer, not given up on after a timeout
    assert not sub.detaching
    assert _wait_for(
        lambda: pyngus_compat.link_count(ctl.conn) == links - receivers), (
        pyngus_compat.link_count(ctl.conn), links, receivers)


def _amqp091(work):
    """Run work(channel) on a fresh AMQP 0-9-1 channel to URL's broker."""
    import amqp
    parts = urllib.parse.urlsplit(URL)
    conn = amqp.Connection(host='%s:%s' % (parts.hostname, parts.port),
                           userid=parts.username, password=parts.password)
    conn.connect()
    try:
        return work(conn.channel())
    finally:
        try:
            conn.close()
        except Exception:
            pass


def _redeclare_accepted(name, **declare) -> bool:
    """Does RabbitMQ accept queue name re-declared with these arguments?"""
    import amqp

    def declare_again(channel):
        try:
            channel.queue_declare(name, **declare)
            return True
        except amqp.exceptions.PreconditionFailed:
            return False
    return _amqp091(declare_again)


def _queue_type_is(name, queue_type) -> bool:
    """Does RabbitMQ accept queue name re-declared as queue_type?"""
    return _redeclare_accepted(name, durable=True, auto_delete=False,
                               arguments={'x-queue-type': queue_type})


def test_quorum_queues(bus, conf):
    conf.set_override('rabbit_quorum_queue', True,
                      group='oslo_messaging_amqp')
    try:
        topic = _topic()
        t = bus.transport()
        bus.server(t, om.Target(topic=topic, server='q'), Recorder('q'))
        client = om.get_rpc_client(t, om.Target(topic=topic), timeout=20)
        _ready(client)
        assert client.prepare(server='q').call({}, 'echo', value=1) == {
            'server': 'q', 'value': 1}
        nt = bus.notify_transport()
        seen = []

        class Listener:
            def info(self, ctxt, publisher_id, event_type, payload, meta):
                seen.append(payload)
        bus.listener(nt, [om.Target(topic=topic)], Listener())
        notifier = om.Notifier(nt, 'q', driver='messagingv2', topics=[topic])
        assert _wait_for(lambda: notifier.info({}, 'e', {'n': 1}) or seen)
        queues = {}
        for transport in (t, nt):
            for sub in transport._driver._ctl.receiving.subs:
                for rx in sub.links:
                    for op in rx.route.declare:
                        if hasattr(op, 'durable'):
                            queues[op.name] = op
    finally:
        conf.clear_override('rabbit_quorum_queue',
                            group='oslo_messaging_amqp')
    durable = [q for q in queues.values() if not q.auto_delete]
    transient = [q for q in queues.values() if q.auto_delete]
    # topic, server and notification queues; the fanout queue stays
    # transient (auto-delete: a quorum queue cannot be)
    assert len(durable) == 3 and len(transient) == 1, queues
    assert dict(transient[0].arguments).get('x-queue-type') is None
    for queue in durable:
        assert _queue_type_is(queue.name, 'quorum'), queue.name
        assert not _queue_type_is(queue.name, 'classic'), queue.name
    _amqp091(lambda channel: [channel.queue_delete(q.name) for q in durable])


def test_a_refused_reply_queue_gives_way_to_a_new_one(bus, monkeypatch):
    """A reply queue name RabbitMQ refuses is replaced, calls go on.

    A 3.x cluster refuses the name while the queue's node is down; here
    the name is taken by a queue of other arguments, which it refuses too.
    """
    taken = 'reply.taken-' + uuid.uuid4().hex
    _amqp091(lambda channel: channel.queue_declare(
        taken, durable=True, auto_delete=False))
    names = iter([taken])
    real = replies._queue_name
    monkeypatch.setattr(replies, '_queue_name',
                        lambda: next(names, None) or real())
    try:
        topic = _topic()
        t = bus.transport()
        bus.server(t, om.Target(topic=topic, server='r'), Recorder('r'))
        client = om.get_rpc_client(t, om.Target(topic=topic), timeout=20)
        assert client.call({}, 'echo', value=1)['value'] == 1
        queue = t._driver._ctl.replies.queue
        assert queue != taken and queue.startswith('reply.'), queue
    finally:
        _amqp091(lambda channel: channel.queue_delete(taken))


def test_calls_beside_a_back_to_back_caster(bus):
    """Casts sent back to back do not hold up the same transport's calls.

    A pre-settled cast waits for the I/O thread to write it while the
    connection carries calls (see ProtonDriver._cast_presettled). Handing
    every cast over at once let this caster send some 2,400-3,000 casts/s
    and made the calls beside it take 59-315 ms (median) instead of 6-9 ms.
    """
    topic = _topic()
    servers = bus.transport()
    calls, casts = Recorder('calls'), Recorder('casts')
    bus.server(servers, om.Target(topic=topic, server='c'), calls)
    bus.server(servers, om.Target(topic=topic + '-casts', server='k'), casts)
    t = bus.transport()
    caller = om.get_rpc_client(t, om.Target(topic=topic, server='c'),
                               timeout=10)
    caster = om.get_rpc_client(t, om.Target(topic=topic + '-casts',
                                            server='k'))
    _ready(caller)
    stop = threading.Event()
    sent = []

    def flood():
        while not stop.is_set():
            caster.cast({}, 'note', value=len(sent))
            sent.append(1)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        took = []
        end = time.monotonic() + 5
        while time.monotonic() < end:
            start = time.monotonic()
            caller.call({}, 'echo', value=len(took))
            took.append(time.monotonic() - start)
    finally:
        stop.set()
        thread.join(10)
    took.sort()
    median = took[len(took) // 2]
    assert len(sent) > 1000, 'the caster sent only %d casts' % len(sent)
    assert median < 0.03, 'calls took %.0f ms (median), %.0f ms at most' % (
        1000 * median, 1000 * took[-1])
    assert _wait_for(lambda: len(casts.seen) == len(sent), 60), (
        '%d of %d casts arrived' % (len(casts.seen), len(sent)))


def test_exchanges_are_separate(bus):
    topic = _topic()
    t = bus.transport()
    a, b = Recorder('a'), Recorder('b')
    bus.server(t, om.Target(exchange='xa', topic=topic, server='x'), a)
    bus.server(t, om.Target(exchange='xb', topic=topic, server='x'), b)
    ca = om.get_rpc_client(t, om.Target(exchange='xa', topic=topic),
                           timeout=20)
    cb = om.get_rpc_client(t, om.Target(exchange='xb', topic=topic),
                           timeout=20)
    assert ca.call({}, 'echo', value=1)['server'] == 'a'
    assert cb.call({}, 'echo', value=2)['server'] == 'b'


def test_remote_exception_and_timeout(bus):
    topic = _topic()
    t = bus.transport()
    bus.server(t, om.Target(topic=topic, server='x'), Recorder())
    client = om.get_rpc_client(t, om.Target(topic=topic), timeout=20)
    _ready(client)
    with pytest.raises(ValueError, match='expected failure'):
        client.call({}, 'fail')
    nobody = om.get_rpc_client(t, om.Target(topic=_topic()), timeout=2)
    start = time.monotonic()
    with pytest.raises(om.MessagingTimeout):
        nobody.call({}, 'echo', value=1)
    assert time.monotonic() - start < 3.5


def test_call_monitor_heartbeats(bus):
    topic = _topic()
    t = bus.transport()
    bus.server(t, om.Target(topic=topic, server='x'), Recorder())
    client = om.get_rpc_client(t, om.Target(topic=topic), timeout=20)
    _ready(client)
    with pytest.raises(om.MessagingTimeout):
        client.prepare(timeout=1).call({}, 'sleep', seconds=3)
    monitored = client.prepare(timeout=60, call_monitor_timeout=2)
    assert monitored.call({}, 'sleep', seconds=4) == 4


class Notes:
    """A notification endpoint that remembers payloads per listener."""

    def __init__(self, requeue_first=False):
        self.payloads = []
        self.requeue_first = requeue_first
        self.requeued = []
        self.lock = threading.Lock()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            if self.requeue_first and payload not in self.requeued:
                self.requeued.append(payload)
                return om.NotificationResult.REQUEUE
            self.payloads.append(payload)
        return om.NotificationResult.HANDLED


def test_notification_pools(bus):
    topic = _topic()
    nt = bus.notify_transport()
    default = Notes()
    pools = {'p1': [Notes(), Notes()], 'p2': [Notes(), Notes()]}
    bus.listener(nt, [om.Target(topic=topic)], default)
    for pool, members in pools.items():
        for ep in members:
            bus.listener(bus.notify_transport(), [om.Target(topic=topic)],
                         ep, pool=pool)
    time.sleep(1.0)  # let every pool's queue be bound
    notifier = om.Notifier(nt, 'pub', driver='messagingv2', topics=[topic])
    for n in range(20):
        notifier.info({}, 'ev', n)
    want = list(range(20))
    assert _wait_for(lambda: sorted(default.payloads) == want)
    for pool, members in pools.items():
        assert _wait_for(
            lambda: sorted(members[0].payloads + members[1].payloads) ==
            want), pool


def test_notifications_are_kept_until_a_listener_comes(bus):
    topic = _topic()
    nt = bus.notify_transport()
    notifier = om.Notifier(nt, 'pub', driver='messagingv2', topics=[topic])
    for n in range(5):
        notifier.info({}, 'ev', {'n': n})
    notes = Notes()
    bus.listener(bus.notify_transport(), [om.Target(topic=topic)], notes)
    assert _wait_for(lambda: len(notes.payloads) == 5)
    assert [p['n'] for p in notes.payloads] == list(range(5))


def test_requeue_and_batches(bus):
    topic = _topic()
    nt = bus.notify_transport()
    notes = Notes(requeue_first=True)
    bus.listener(nt, [om.Target(topic=topic)], notes)
    notifier = om.Notifier(nt, 'pub', driver='messagingv2', topics=[topic])
    notifier.info({}, 'ev', 'again')
    assert _wait_for(lambda: notes.payloads == ['again'])
    assert notes.requeued == ['again']

    batches = []

    class Batch:
        def info(self, messages):
            batches.append([m['payload'] for m in messages])

    btopic = _topic()
    bus.listener(nt, [om.Target(topic=btopic)], Batch(), batch=5)
    bnotifier = om.Notifier(nt, 'pub', driver='messagingv2',
                            topics=[btopic])
    time.sleep(0.5)
    for n in range(10):
        bnotifier.info({}, 'ev', n)
    assert _wait_for(lambda: sum(len(b) for b in batches) == 10)
    assert max(len(b) for b in batches) > 1
    assert sorted(x for b in batches for x in b) == list(range(10))


def _queue_address(url, name):
    """The AMQP 1.0 address of a queue on this RabbitMQ."""
    with _raw(url) as conn:
        version = str(conn.conn.remote_properties.get('version', '3'))
    if int(version.split('.')[0]) >= 4:
        return '/queues/' + urllib.parse.quote(name, safe='')
    return '/amq/queue/' + name


class _raw:
    def __init__(self, url):
        self.conn = utils.raw_connection(url)

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc):
        self.conn.close()


def test_malformed_requests_are_rejected(bus, caplog):
    topic = _topic()
    t = bus.transport()
    ep = Recorder()
    bus.server(t, om.Target(topic=topic, server='x'), ep)
    client = om.get_rpc_client(t, om.Target(topic=topic), timeout=20)
    _ready(client)
    address = _queue_address(URL, 'unicast.openstack.%s' % topic)
    bad = [proton.Message(body='not json'),
           proton.Message(body='[1, 2]'),
           proton.Message(body='{"context": {}}'),
           proton.Message(body=b'\x00\x01binary'),
           proton.Message(body='{"request": {"method": "echo"}, '
                               '"context": "nope"}')]
    if '/amq/queue/' in address:
        # RabbitMQ 4 silently drops messages without a body section
        bad.append(proton.Message(body=None))
    caplog.set_level(logging.WARNING)
    with _raw(URL) as conn:
        sender = conn.create_sender(address)
        for message in bad:
            sender.send(message)
    assert client.call({}, 'echo', value='after')['value'] == 'after'
    assert _wait_for(lambda: len([
        r for r in caplog.records
        if 'malformed' in r.getMessage()]) >= 5)
    assert ep.seen[-1] == 'after'


def test_wrong_password_fails_fast(conf):
    parts = urllib.parse.urlsplit(URL)
    bad = '%s://%s:%s@%s:%s/' % (parts.scheme, parts.username or 'guest',
                                 'wrong-' + uuid.uuid4().hex[:4],
                                 parts.hostname, parts.port or 5672)
    t = om.get_rpc_transport(conf, bad)
    try:
        client = om.get_rpc_client(t, om.Target(topic=_topic()), timeout=15)
        start = time.monotonic()
        with pytest.raises(om.MessageDeliveryFailure,
                           match='authentication'):
            client.call({}, 'echo', value=1)
        assert time.monotonic() - start < 10
    finally:
        t.cleanup()


def test_unreachable_host_times_out_on_time(conf):
    t = om.get_rpc_transport(conf, 'amqp://guest:guest@127.0.0.1:1/')
    try:
        client = om.get_rpc_client(t, om.Target(topic=_topic()), timeout=2)
        start = time.monotonic()
        with pytest.raises(om.MessagingTimeout):
            client.call({}, 'echo', value=1)
        assert 1.9 < time.monotonic() - start < 3.5
    finally:
        t.cleanup()


_GREEN = r'''
import eventlet
eventlet.monkey_patch()
import sys, threading, time, uuid
from oslo_config import cfg
import oslo_messaging as om
sys.path.insert(0, sys.argv[2])
from tests import rabbit_cleanup
rabbit_cleanup.start()
cfg.CONF([])
url = sys.argv[1]
topic = 'green-' + uuid.uuid4().hex[:8]
class EP:
    def echo(self, ctxt, value):
        return value
t = om.get_rpc_transport(cfg.CONF, url)
server = om.get_rpc_server(t, om.Target(topic=topic, server='g'), [EP()],
                           executor='eventlet')
server.start()
client = om.get_rpc_client(t, om.Target(topic=topic), timeout=20)
assert client.call({}, 'echo', value=1) == 1
threads = [eventlet.spawn(client.call, {}, 'echo', value=n)
           for n in range(20)]
assert sorted(th.wait() for th in threads) == list(range(20))
from eventlet import patcher
real = patcher.original('threading')
# the I/O loop is a green thread of this hub, not a native one
assert [th for th in threading.enumerate() if th.name == 'amqp1-io']
assert not [th for th in real.enumerate() if th.name == 'amqp1-io']
server.stop(); server.wait(); t.cleanup()
rabbit_cleanup.finish()
sys.stdout.write('green ok\n')
'''


def test_eventlet_monkey_patched_service():
    out = subprocess.run([sys.executable, '-c', _GREEN, URL, REPO_DIR],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'green ok' in out.stdout


def test_bus_check_tells_rabbitmq_from_the_daemons():
    """The plugin's readiness probe names RabbitMQ and its version."""
    argv = [sys.executable, os.path.join(REPO_DIR, 'tools', 'bus-check'),
            '--peer-product', URL, '--expect', 'qpid-cpp']
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stdout.startswith('RabbitMQ ')
    assert "answers as 'RabbitMQ'" in out.stderr
    argv[-1] = 'RabbitMQ'
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _is_durable(name) -> bool:
    """Does RabbitMQ refuse queue name re-declared non-durable?"""
    return not _redeclare_accepted(name, durable=False, auto_delete=False)


def test_bench_rabbit_durable_keeps_what_it_sends(tmp_path):
    """tools/bench --rabbit-durable: the rabbit driver's durable queues."""
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_DIR, 'tools', 'bench'),
         '--duration', '1', '--scenarios', 'notify', '--payloads', '100',
         '--rabbit-durable', '--drivers', 'rabbit-durable',
         '--amqp-url', URL, '--json', str(out), '--no-png'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result, = json.loads(out.read_text())['results']
    assert result['driver'] == 'rabbit-durable'
    assert 'impl_rabbit' in result['driver_class']
    assert result['received'] > 0 and result['lost'] == 0, result
    queue = result['topic'] + '.info'
    try:
        assert _is_durable(queue)
    finally:
        _amqp091(lambda channel: channel.queue_delete(queue))
