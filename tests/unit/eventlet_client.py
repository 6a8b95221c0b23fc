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
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from eventlet import patcher  # noqa: E402
from futurist import _thread as futurist_thread  # noqa: E402
from oslo_config import cfg  # noqa: E402
import oslo_messaging as om  # noqa: E402
from oslo_messaging import conffixture  # noqa: E402

from oslo_messaging_amqp1 import opts as amqp_opts  # noqa: E402
from tests import peers  # noqa: E402

warnings.simplefilter('ignore')
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

    # the I/O threads are real OS threads, named amqp1-io
    real_threading = patcher.original('threading')
    io_threads = [t for t in real_threading.enumerate()
                  if t.name == 'amqp1-io']
    result['io_threads'] = len(io_threads)
    result['io_native'] = all(
        isinstance(t, real_threading.Thread) for t in io_threads)
    ctl = transport._driver._ctl
    result['ctl_thread_native'] = isinstance(ctl.loop._thread,
                                             real_threading.Thread)
    result['ctl_thread_name'] = ctl.loop._thread.name
    # a green thread would run on the main OS thread: compare OS idents
    real_thread = patcher.original('_thread')
    idents = []
    ctl.loop.call_soon(lambda: idents.append(real_thread.get_ident()))
    wait_for(lambda: idents)
    result['io_os_thread_is_not_main'] = bool(
        idents and idents[0] != real_thread.get_ident())
    result['threading_patched'] = patcher.is_monkey_patched('thread')
    result['elapsed'] = time.monotonic() - started

    listener.stop()
    listener.wait()
    server.stop()
    server.wait()
    transport.cleanup()
    ntransport.cleanup()
    result['io_threads_after_cleanup'] = len(
        [t for t in real_threading.enumerate() if t.name == 'amqp1-io'])
    peer.stop()
    sys.stdout.write(json.dumps(result) + '\n')
    sys.stdout.flush()


if __name__ == '__main__':
    main()
