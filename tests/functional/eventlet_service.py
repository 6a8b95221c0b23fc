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

"""A monkey-patched service on the driver, run by test_eventlet.py.

``python -m tests.functional.eventlet_service SCENARIO URL [--import-first]``
patches first, as an eventlet service does (with --import-first, after
importing the driver), runs one scenario and prints one JSON line:

traffic    RPC servers on the eventlet executor; calls from 4 green
           threads, casts, a fanout, notifications to a listener; the
           driver logs at DEBUG through a handler whose lock is green
idle       1,000 green calls held by the server at once: the process's
           CPU time while they wait, then every reply
late       100 notifications sent by green threads before any listener
           exists (a router releases them, the driver retries), then a
           listener: it gets every one
slow       a listener taking 5 ms a notification, 1,000 sent at once by 4
           green threads: every one arrives
reconnect  an RPC server and calls every 0.1 s; prints "ready", then the
           parent restarts the bus: calls are answered over a new
           connection
sigterm    a service stopping on SIGTERM as oslo.service does (stop the
           server, clean the transport up, exit) while calls wait for
           replies that will not come and casts go out in a loop; prints
           "ready" first, then the parent signals
"""

import os
import sys

if sys.argv[3:] == ['--import-first']:
    # the driver imported before monkey-patching, as a pytest plugin or a
    # service's own imports may do
    from oslo_messaging_amqp1 import eventloop  # noqa: F401

import eventlet  # noqa: E402

eventlet.monkey_patch()

import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402

from eventlet import event as green_event  # noqa: E402
from eventlet import hubs  # noqa: E402
from eventlet import patcher  # noqa: E402
from oslo_config import cfg  # noqa: E402
import oslo_messaging as om  # noqa: E402
from oslo_messaging import conffixture  # noqa: E402
from oslo_messaging import server as om_server  # noqa: E402

from oslo_messaging_amqp1 import opts as amqp_opts  # noqa: E402

warnings.simplefilter('ignore')
_thread = patcher.original('_thread')
MAIN_OS_THREAD = _thread.get_ident()


class OSThreadHandler(logging.Handler):
    """Counts records, and those handled on another OS thread than main.

    Made after monkey-patching, its lock is green: a native thread that
    takes it while a green thread holds it fails with greenlet.error.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.foreign = []
        self.warnings = []
        self.threads = set()

    def emit(self, record) -> None:
        self.count += 1
        self.threads.add(record.threadName)
        eventlet.sleep(0)  # hold the lock across a switch, as I/O does
        if _thread.get_ident() != MAIN_OS_THREAD:
            self.foreign.append(record.getMessage()[:120])
        if record.levelno >= logging.WARNING:
            self.warnings.append(record.getMessage()[:200])


class Endpoint(object):

    def __init__(self, name, gate=None) -> None:
        self.name = name
        self.gate = gate
        self.casts = []

    def echo(self, ctxt, value):
        if self.gate is not None:
            self.gate.wait()
        return {'server': self.name, 'value': value}

    def record(self, ctxt, value):
        self.casts.append(value)


class Listener(object):

    def __init__(self) -> None:
        self.seen = []

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.seen.append(payload['n'])


def wait_for(predicate, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        eventlet.sleep(0.02)
    return predicate()


def make_conf():
    conf = cfg.ConfigOpts()
    conf([], project='amqp1-eventlet')
    conffixture.ConfFixture(conf)
    amqp_opts.register(conf)
    conf.set_override('link_retry_delay', 1, group='oslo_messaging_amqp')
    return conf


def server(transport, topic, name, endpoint):
    srv = om.get_rpc_server(transport, om.Target(topic=topic, server=name),
                            [endpoint], executor='eventlet')
    srv.start()
    return srv


def ready(client, timeout=30.0):
    """Call until a server answers (links attach asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.prepare(timeout=3).call({}, 'echo', value='ready')
        except om.MessagingTimeout:
            if time.monotonic() > deadline:
                raise


def listen(ntransport, ntopic, endpoint):
    """A started notification listener (eventlet executor) on ntopic."""
    listener = om.get_notification_listener(
        ntransport, [om.Target(topic=ntopic)], [endpoint],
        executor='eventlet')
    listener.start()
    return listener


def attached(notifier, endpoint) -> bool:
    """Probe until the listener gets one (a router drops it till then)."""
    return wait_for(lambda: (notifier.info({}, 'probe', {'n': -1}) or
                             -1 in endpoint.seen), 30)


def received(endpoint, count, timeout) -> int:
    """How many of notifications 0..count-1 arrived within timeout."""
    wait_for(lambda: set(range(count)) <= set(endpoint.seen), timeout)
    return len(set(range(count)) & set(endpoint.seen))


def stop(*servers) -> None:
    """Stop servers and listeners and wait for them."""
    for srv in servers:
        srv.stop()
        srv.wait()


def traffic(url, result) -> None:
    handler = OSThreadHandler()
    log = logging.getLogger('oslo_messaging_amqp1')
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    conf = make_conf()
    transport = om.get_rpc_transport(conf, url)
    topic = 'ev-' + uuid.uuid4().hex[:8]
    endpoints = [Endpoint('s0'), Endpoint('s1')]
    servers = [server(transport, topic, ep.name, ep) for ep in endpoints]
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=20)
    for ep in endpoints:
        ready(client.prepare(server=ep.name))
    pool = eventlet.GreenPool(4)
    replies = list(pool.imap(
        lambda n: client.call({}, 'echo', value=n)['value'], range(200)))
    result['calls'] = replies == list(range(200))
    for n in range(100):
        client.prepare(server='s0').cast({}, 'record', value=n)
    client.prepare(fanout=True).cast({}, 'record', value='all')
    wait_for(lambda: len(endpoints[0].casts) >= 101 and
             'all' in endpoints[1].casts)
    result['casts'] = sorted(
        c for c in endpoints[0].casts if c != 'all') == list(range(100))
    result['fanout'] = all('all' in ep.casts for ep in endpoints)

    ntransport = om.get_notification_transport(conf, url)
    listener_ep = Listener()
    ntopic = 'evn-' + uuid.uuid4().hex[:8]
    listener = listen(ntransport, ntopic, listener_ep)
    notifier = om.Notifier(ntransport, 'ev', driver='messagingv2',
                           topics=[ntopic])
    attached(notifier, listener_ep)
    for n in range(300):
        notifier.info({}, 'ev', {'n': n})
    result['notifications'] = received(listener_ep, 300, 20)
    stop(*servers, listener)
    transport.cleanup()
    ntransport.cleanup()
    log.removeHandler(handler)
    result['log_records'] = handler.count
    result['log_threads'] = sorted(handler.threads)
    result['log_records_off_main_thread'] = handler.foreign[:5]
    result['warnings'] = handler.warnings[:5]


def idle(url, result) -> None:
    conf = make_conf()
    conf.register_opts(om_server._pool_opts)
    conf.set_override('executor_thread_pool_size', 1100)
    transport = om.get_rpc_transport(conf, url)
    topic = 'evi-' + uuid.uuid4().hex[:8]
    gate = green_event.Event()
    ep = Endpoint('s0', gate)
    srv = om.get_rpc_server(transport, om.Target(topic=topic, server='s0'),
                            [ep], executor='eventlet')
    srv.start()
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=60)
    gate.send(True)
    ready(client)
    ep.gate = green_event.Event()
    answers = []
    pool = eventlet.GreenPool(1000)
    for n in range(1000):
        pool.spawn_n(lambda n=n: answers.append(
            client.call({}, 'echo', value=n)['value']))
    calls = transport._driver._ctl.replies.calls
    result['in_flight'] = wait_for(lambda: len(calls) >= 1000, 30)
    eventlet.sleep(0.5)
    before = os.times()
    eventlet.sleep(2.0)
    after = os.times()
    result['cpu_while_waiting'] = round(
        (after.user - before.user) + (after.system - before.system), 3)
    ep.gate.send(True)
    pool.waitall()
    result['answered'] = sorted(answers) == list(range(1000))
    stop(srv)
    transport.cleanup()


class SlowListener(Listener):

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        time.sleep(0.005)   # green: other green threads run meanwhile
        self.seen.append(payload['n'])


def _notify_all(notifier, count, threads=4):
    """Send count notifications from green threads, without waiting.

    Returns the green threads and the list their errors go to.
    """
    errors = []

    def send(first):
        for n in range(first, count, threads):
            try:
                notifier.info({}, 'ev', {'n': n})
            except Exception as exc:
                errors.append(repr(exc)[:200])
    return [eventlet.spawn(send, i) for i in range(threads)], errors


def late(url, result) -> None:
    """Notifications sent before any listener exists reach a late one."""
    conf = make_conf()
    ntransport = om.get_notification_transport(conf, url)
    ntopic = 'evl-' + uuid.uuid4().hex[:8]
    notifier = om.Notifier(ntransport, 'ev', driver='messagingv2',
                           topics=[ntopic])
    senders, errors = _notify_all(notifier, 100)
    eventlet.sleep(2.0)
    listener_ep = Listener()
    listener = listen(ntransport, ntopic, listener_ep)
    for sender in senders:
        sender.wait()
    result['received'] = received(listener_ep, 100, 30)
    result['errors'] = errors[:3]
    stop(listener)
    ntransport.cleanup()


def slow(url, result) -> None:
    """A listener slower than its notifier loses nothing."""
    conf = make_conf()
    # one notification at a time: 1,000 take at least 5 s
    conf.register_opts(om_server._pool_opts)
    conf.set_override('executor_thread_pool_size', 1)
    ntransport = om.get_notification_transport(conf, url)
    ntopic = 'evs-' + uuid.uuid4().hex[:8]
    listener_ep = SlowListener()
    listener = listen(ntransport, ntopic, listener_ep)
    notifier = om.Notifier(ntransport, 'ev', driver='messagingv2',
                           topics=[ntopic])
    attached(notifier, listener_ep)
    started = time.monotonic()
    senders, errors = _notify_all(notifier, 1000)
    for sender in senders:
        sender.wait()
    result['send_seconds'] = round(time.monotonic() - started, 2)
    result['received'] = received(listener_ep, 1000, 60)
    result['receive_seconds'] = round(time.monotonic() - started, 2)
    result['errors'] = errors[:3]
    stop(listener)
    ntransport.cleanup()


def reconnect(url, result) -> None:
    """Calls go on after the bus restarts (the parent restarts it)."""
    conf = make_conf()
    conf.set_override('connection_retry_interval_max', 1,
                      group='oslo_messaging_amqp')
    transport = om.get_rpc_transport(conf, url)
    topic = 'evr-' + uuid.uuid4().hex[:8]
    srv = server(transport, topic, 's0', Endpoint('s0'))
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=2)
    ready(client)
    sys.stdout.write('ready\n')
    sys.stdout.flush()
    ctl = transport._driver._ctl
    first = ctl.conn
    failed = 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            client.call({}, 'echo', value=1)
            if ctl.conn is not first:
                break   # answered over the new connection
        except (om.MessagingTimeout, om.MessageDeliveryFailure):
            failed += 1
        eventlet.sleep(0.1)
    result['new_connection'] = ctl.conn is not first
    result['failed_calls'] = failed
    try:
        result['after'] = client.call({}, 'echo', value='after')['value']
    except Exception as exc:
        result['after'] = repr(exc)[:200]
    stop(srv)
    transport.cleanup()


def sigterm(url, result) -> None:
    conf = make_conf()
    transport = om.get_rpc_transport(conf, url)
    topic = 'evt-' + uuid.uuid4().hex[:8]
    srv = server(transport, topic, 's0', Endpoint('s0'))
    client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=60)
    ready(client)
    signalled = green_event.Event()
    signal.signal(signal.SIGTERM,
                  lambda signum, frame: signalled.send(time.monotonic()))
    # the hub may sleep in epoll until its next timer: a byte on a pipe it
    # watches wakes it for the handler's event (oslo.service does alike)
    _os = patcher.original('os')
    wake_r, wake_w = _os.pipe()
    _os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    def drain_wakeups():
        while True:
            hubs.trampoline(wake_r, read=True)
            _os.read(wake_r, 64)
    eventlet.spawn_n(drain_wakeups)
    nobody = client.prepare(topic='nobody-' + topic)
    # calls waiting for a reply that will not come, casts in a tight loop
    for n in range(10):
        eventlet.spawn_n(lambda: nobody.call({}, 'echo', value=1))
    for n in range(4):
        eventlet.spawn_n(lambda: [nobody.cast({}, 'record', value=i)
                                  for i in range(500)])
    eventlet.sleep(1.0)
    sys.stdout.write('ready\n')
    sys.stdout.flush()
    got = signalled.wait()
    stop(srv)
    transport.cleanup()
    result['stop_seconds'] = round(time.monotonic() - got, 3)


def main() -> None:
    scenario, url = sys.argv[1], sys.argv[2]
    result = {'patched': patcher.is_monkey_patched('thread')}
    scenarios = {'traffic': traffic, 'idle': idle, 'sigterm': sigterm,
                 'late': late, 'slow': slow, 'reconnect': reconnect}
    scenarios[scenario](url, result)
    sys.stdout.write(json.dumps(result) + '\n')
    sys.stdout.flush()
    os._exit(0)


if __name__ == '__main__':
    main()
