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

"""Run by test_eventlet.py in a fresh interpreter: the driver under eventlet.

Monkey-patches first, as an eventlet service does, then starts a router
peer, an RPC server and a notification listener, makes calls (also from
several green threads at once), casts and notifications, and prints one
JSON line with what it saw.
"""

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from eventlet import hubs  # noqa: E402
from eventlet import patcher  # noqa: E402
from futurist import _thread as futurist_thread  # noqa: E402
from oslo_config import cfg  # noqa: E402
import oslo_messaging as om  # noqa: E402
from oslo_messaging import conffixture  # noqa: E402

from oslo_messaging_amqp1 import opts as amqp_opts  # noqa: E402
from tests import peers  # noqa: E402

warnings.simplefilter('ignore')
# a router peer in a process of its own: prints its port, stops at EOF
PEER_PROCESS = (
    'import sys\n'
    'from tests import peers\n'
    'peer = peers.Peer("router").start()\n'
    'sys.stdout.write("%d\\n" % peer.port)\n'
    'sys.stdout.flush()\n'
    'sys.stdin.read()\n'
    'peer.stop()\n')
# idle executor workers notice a shutdown sooner (see conftest.py)
futurist_thread.ThreadWorker.MAX_IDLE_FOR = 0.1


class Endpoint(object):

    def __init__(self):
        self.casts = []

    def echo(self, ctxt, value):
        eventlet.sleep(0.01)
        return value

    def record(self, ctxt, value):
        self.casts.append(value)


class Listener(object):

    def __init__(self):
        self.seen = []

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.seen.append(payload)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        eventlet.sleep(0.01)
    return predicate()


def fork_and_call(client, fresh_hub):
    """Fork; the child calls once, the parent calls while and after.

    The parent's green I/O loop is copied into the child; it must stop
    there without touching the parent's sockets. oslo.service gives each
    worker a fresh hub (fresh_hub); a plain fork keeps the parent's.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if fresh_hub:
                hubs.use_hub()
            answer = client.call({}, 'echo', value='child')
            os.write(write_fd, json.dumps(answer).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    during = [client.call({}, 'echo', value=i) for i in range(20)]
    child = json.loads(os.read(read_fd, 100).decode())
    os.close(read_fd)
    _pid, status = os.waitpid(pid, 0)
    started = time.monotonic()
    after = [client.call({}, 'echo', value=i) for i in range(20)]
    return {'child': child, 'child_exit': os.waitstatus_to_exitcode(status),
            'during': during == list(range(20)),
            'after': after == list(range(20)),
            'after_s': round(time.monotonic() - started, 2)}


def fork_scenario(conf):
    """fork_and_call with a router peer in its own process.

    An in-process peer would be forked too, and its copy would serve the
    parent's sockets from the child.
    """
    proc = subprocess.Popen(
        [sys.executable, '-c', PEER_PROCESS], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        transport = om.get_rpc_transport(conf, 'amqp://127.0.0.1:%d/' % port)
        server = om.get_rpc_server(
            transport, om.Target(topic='forked', server='host1'),
            [Endpoint()], executor='threading')
        server.start()
        client = om.get_rpc_client(transport, om.Target(topic='forked'),
                                   timeout=5)
        wait_for(lambda: client.call({}, 'echo', value=1) == 1)
        found = [fork_and_call(client, fresh) for fresh in (True, False)]
        server.stop()
        server.wait()
        transport.cleanup()
        return found
    finally:
        proc.stdin.close()
        proc.wait()


def lookup_scenario(conf, port):
    """A slow host lookup on connect: do other green threads run meanwhile?

    The process's (green) getaddrinfo is wrapped to take 0.3 s; a ticker
    counts 10 ms ticks while a new transport makes its first call.
    Returns (lookups through the green resolver, ticks during the call).
    """
    import socket
    original = socket.getaddrinfo
    lookups = []

    def slow(host, *args, **kwargs):
        lookups.append(host)
        eventlet.sleep(0.3)
        return original(host, *args, **kwargs)

    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            eventlet.sleep(0.01)

    socket.getaddrinfo = slow
    beat = eventlet.spawn(ticker)
    try:
        transport = om.get_rpc_transport(conf, 'amqp://127.0.0.1:%d/' % port)
        client = om.get_rpc_client(transport, om.Target(topic='compute'),
                                   timeout=5)
        start = time.monotonic()
        client.call({}, 'echo', value=1)
        during = len([t for t in ticks if t >= start])
        transport.cleanup()
    finally:
        socket.getaddrinfo = original
        beat.kill()
    return len(lookups), during


def main():
    result = {}
    peer = peers.Peer('router').start()
    conf = cfg.ConfigOpts()
    conf([], project='amqp1-eventlet')
    conffixture.ConfFixture(conf)
    amqp_opts.register(conf)
    conf.set_override('link_retry_delay', 1, group='oslo_messaging_amqp')
    url = 'amqp://127.0.0.1:%d/' % peer.port
    transport = om.get_rpc_transport(conf, url)
    endpoint = Endpoint()
    server = om.get_rpc_server(
        transport, om.Target(topic='compute', server='host1'), [endpoint],
        executor='threading')
    server.start()
    started = time.monotonic()
    wait_for(lambda: len([a for r, a, _n, _c in peer.links()
                          if r == 'receiver']) == 3)
    client = om.get_rpc_client(transport, om.Target(topic='compute'),
                               timeout=5)
    result['call'] = client.call({}, 'echo', value='green')
    pool = eventlet.GreenPool()
    result['parallel'] = sorted(pool.imap(
        lambda i: client.call({}, 'echo', value=i), range(10)))
    for i in range(3):
        client.cast({}, 'record', value=i)
    wait_for(lambda: len(endpoint.casts) == 3)
    result['casts'] = endpoint.casts

    ntransport = om.get_notification_transport(conf, url)
    listener_ep = Listener()
    listener = om.get_notification_listener(
        ntransport, [om.Target(topic='notifications')], [listener_ep],
        executor='threading')
    listener.start()
    wait_for(lambda: any(a and a.endswith('notifications.info')
                         for r, a, _n, _c in peer.links()
                         if r == 'receiver'))
    om.Notifier(ntransport, 'p', driver='messagingv2',
                topics=['notifications']).info({}, 'e', {'x': 1})
    wait_for(lambda: listener_ep.seen)
    result['notifications'] = listener_ep.seen

    # the I/O loops are green threads named amqp1-io, no native thread
    real_threading = patcher.original('threading')
    green_threading = __import__('threading')
    result['native_io_threads'] = len(
        [t for t in real_threading.enumerate() if t.name == 'amqp1-io'])
    result['io_threads'] = len(
        [t for t in green_threading.enumerate() if t.name == 'amqp1-io'])
    ctl = transport._driver._ctl
    result['ctl_thread_name'] = ctl.loop._thread.name
    # a green loop runs on the hub's OS thread: compare OS idents
    real_thread = patcher.original('_thread')
    idents = []
    ctl.loop.call_soon(lambda: idents.append(real_thread.get_ident()))
    wait_for(lambda: idents)
    result['io_on_the_hub_thread'] = idents == [real_thread.get_ident()]
    result['threading_patched'] = patcher.is_monkey_patched('thread')
    result['elapsed'] = time.monotonic() - started
    result['fork'] = fork_scenario(conf)
    result['lookups'], result['ticks_during_lookup'] = lookup_scenario(
        conf, peer.port)

    listener.stop()
    listener.wait()
    server.stop()
    server.wait()
    transport.cleanup()
    ntransport.cleanup()
    result['io_threads_after_cleanup'] = len(
        [t for t in green_threading.enumerate() if t.name == 'amqp1-io'])
    peer.stop()
    sys.stdout.write(json.dumps(result) + '\n')
    sys.stdout.flush()


if __name__ == '__main__':
    main()
