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

"""The other side of test_interop: oslo.messaging's former AMQP 1.0 driver.

Run by the Python of a virtualenv holding oslo.messaging 14.9.x (the last
release with ``oslo_messaging._drivers.impl_amqp1``), never imported by the
test process itself.  It runs, on the *old* driver:

* an RPC server (topic + server name, fanout too) with an :class:`Endpoint`;
* a notification listener on one topic;
* a client that calls, casts and notifies on the test's behalf.

The test talks to it over stdin/stdout, one JSON object per line: a
request ``{"op": ..., ...}`` gets exactly one answer ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": ...}``.  The first line it
writes is ``{"ready": true, "driver": "<module of the driver class>"}``.
Logs go to the file given with --log, never to stdout.
"""

import argparse
import json
import logging
import sys

from oslo_config import cfg
import oslo_messaging as om

# run as a script: its own folder is on sys.path, the tests package is not
from endpoints import Endpoint
from endpoints import NotifyContext
from endpoints import NotifyEndpoint
from endpoints import Recorder


class Peer(object):
    """The old driver's server, listener and client in one process."""

    def __init__(self, args):
        self.args = args
        self.recorder = Recorder()
        self.transport = om.get_rpc_transport(cfg.CONF, url=args.url)
        self.notify_transport = om.get_notification_transport(
            cfg.CONF, url=args.url)
        for item in args.opt:
            name, _, value = item.partition('=')
            cfg.CONF.set_override(name, value, group='oslo_messaging_amqp')
        target = om.Target(exchange=args.exchange, topic=args.server_topic,
                           server=args.server_name)
        self.server = om.get_rpc_server(
            self.transport, target,
            [Endpoint(self.recorder, args.server_name)],
            executor='threading')
        self.listener = om.get_notification_listener(
            self.notify_transport, [om.Target(topic=args.notify_topic)],
            [NotifyEndpoint(self.recorder)], executor='threading')
        self.notifiers = {}

    def start(self):
        self.server.start()
        self.listener.start()

    def stop(self):
        for thing in (self.server, self.listener):
            thing.stop()
            thing.wait()
        self.transport.cleanup()
        self.notify_transport.cleanup()

    def _client(self, req):
        target = om.Target(exchange=self.args.exchange, topic=req['topic'],
                           server=req.get('server'),
                           fanout=req.get('fanout', False))
        return om.get_rpc_client(self.transport, target,
                                 timeout=req.get('call_timeout', 5),
                                 retry=req.get('retry'))

    # operations ---------------------------------------------------------

    def op_driver(self, req):
        driver = self.transport._driver
        return '%s.%s' % (type(driver).__module__, type(driver).__name__)

    def op_call(self, req):
        client = self._client(req)
        try:
            if req.get('call_monitor_timeout'):
                client = client.prepare(
                    call_monitor_timeout=req['call_monitor_timeout'])
            return {'value': client.call(req.get('ctxt', {}), req['method'],
                                         **req.get('args', {}))}
        except Exception as exc:
            return {'exception': {
                'class': type(exc).__name__,
                'bases': [c.__name__ for c in type(exc).__mro__],
                'module': type(exc).__module__,
                'text': str(exc)}}

    def op_cast(self, req):
        self._client(req).cast(req.get('ctxt', {}), req['method'],
                               **req.get('args', {}))
        return None

    def op_notify(self, req):
        topic = req['topic']
        notifier = self.notifiers.get(topic)
        if notifier is None:
            notifier = om.Notifier(self.notify_transport,
                                   publisher_id=req['publisher_id'],
                                   driver='messagingv2', topics=[topic])
            self.notifiers[topic] = notifier
        getattr(notifier, req['priority'])(NotifyContext(req.get('ctxt', {})),
                                           req['event_type'], req['payload'])
        return None

    def op_wait(self, req):
        return self.recorder.wait(req['kind'], req.get('count', 1),
                                  req.get('wait_timeout', 5))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--url', required=True)
    parser.add_argument('--exchange', required=True)
    parser.add_argument('--server-topic', required=True)
    parser.add_argument('--server-name', required=True)
    parser.add_argument('--notify-topic', required=True)
    parser.add_argument('--log', required=True)
    parser.add_argument('--opt', action='append', default=[],
                        help='[oslo_messaging_amqp] NAME=VALUE')
    args = parser.parse_args()
    logging.basicConfig(filename=args.log, level=logging.DEBUG,
                        format='%(asctime)s %(threadName)s %(name)s '
                               '%(levelname)s %(message)s')
    cfg.CONF([], project='amqp1-interop', default_config_files=[],
             default_config_dirs=[])
    out = sys.stdout
    peer = Peer(args)
    peer.start()
    out.write(json.dumps({'ready': True, 'driver': peer.op_driver({})}) +
              '\n')
    out.flush()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            if req['op'] == 'quit':
                break
            try:
                answer = {'ok': True,
                          'result': getattr(peer, 'op_' + req['op'])(req)}
            except Exception as exc:
                logging.exception('operation %s failed', req['op'])
                answer = {'ok': False,
                          'error': '%s: %s' % (type(exc).__name__, exc)}
            out.write(json.dumps(answer) + '\n')
            out.flush()
    finally:
        peer.stop()


if __name__ == '__main__':
    main()
