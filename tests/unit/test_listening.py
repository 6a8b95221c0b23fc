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

"""How messages reach servers: pushed by the I/O thread, or polled."""

import logging
import threading
import time
import types

import oslo_messaging as om

from oslo_messaging_amqp1 import eventloop
from tests.unit import helpers

SERVER = 'exclusive.nova.compute.host1'


def _poll_threads():
    """Threads of oslo.messaging's PollStyleListenerAdapter."""
    return [t for t in threading.enumerate() if '_runner' in t.name]


def test_inbox_pushes_what_waits_first_then_as_it_comes():
    inbox = eventloop.Inbox()
    pushed = []
    for n in range(3):
        inbox.put(n)
    inbox.push_to(pushed.append)
    inbox.put(3)
    assert pushed == [0, 1, 2, 3]
    assert inbox.get(0) is None
    inbox.push_to(None)
    inbox.put(4)
    assert pushed == [0, 1, 2, 3]
    assert inbox.get(0) == 4


def test_a_closed_inbox_pushes_nothing():
    inbox = eventloop.Inbox()
    inbox.put(1)
    inbox.close()
    pushed = []
    inbox.push_to(pushed.append)
    inbox.put(2)
    assert pushed == []


def test_native_servers_and_listeners_need_no_poll_thread(messaging,
                                                          broker):
    """One message at a time: the I/O thread hands it to the executor."""
    transport = messaging.transport(broker)
    _server, endpoint = messaging.server(transport)
    listener_ep = helpers.NotifyEndpoint()
    ntransport = messaging.notification_transport(broker)
    messaging.listener(ntransport, listener_ep, exchange='nova')
    client = messaging.client(transport, server='host1')
    assert [client.call({}, 'echo', value=n) for n in range(3)] == [0, 1, 2]
    om.Notifier(ntransport, 'p', driver='messagingv2',
                topics=['notifications']).info({}, 'e', {'n': 1})
    assert listener_ep.event.wait(5)
    assert _poll_threads() == []
    # a batching listener still polls: it waits for a batch to fill
    messaging.listener(ntransport, helpers.NotifyEndpoint(), topic='b',
                       batch=True)
    assert len(_poll_threads()) == 1


def test_after_stop_messages_wait_for_the_next_server(messaging, broker):
    """stop() ends the pushing; the next server gets what came after."""
    transport = messaging.transport(broker)
    first, ep1 = messaging.server(transport)
    client = messaging.client(transport, server='host1')
    assert client.call({}, 'echo', value='before') == 'before'
    first.stop()
    for n in range(3):
        client.cast({}, 'echo', value=n)
    assert broker.wait_for(
        lambda: len(helpers.received_on(broker, SERVER)) == 4)
    first.wait()    # cleanup gives back what the first one did not take
    _second, ep2 = messaging.server(messaging.transport(broker))
    assert broker.wait_for(lambda: sorted(ep2.calls) == [0, 1, 2])
    assert ep1.calls == ['before']


def test_a_server_that_cannot_take_a_message_gets_it_again(messaging, broker,
                                                           caplog):
    """A failing hand-off is logged and the message released, not lost."""
    transport = messaging.transport(broker)
    server, endpoint = messaging.server(transport, start=False)
    take = server._on_incoming
    refused = []

    def on_incoming(self, incoming):
        if not refused:
            refused.append(incoming)
            raise RuntimeError('executor full')
        take(incoming)
    server._on_incoming = types.MethodType(on_incoming, server)
    with caplog.at_level(logging.ERROR):
        server.start()
        client = messaging.client(transport, server='host1')
        assert client.call({}, 'echo', value='again') == 'again'
    assert len(refused) == 1
    assert 'could not take a message; released it' in caplog.text
    assert endpoint.calls == ['again']


def test_stop_after_the_transport_was_cleaned_up_returns_at_once(messaging,
                                                                 broker):
    """The I/O thread is gone: stop() has nothing to wait for."""
    transport = messaging.transport(broker)
    server, _endpoint = messaging.server(transport)
    client = messaging.client(transport, server='host1')
    assert client.call({}, 'echo', value=1) == 1
    loop = transport._driver._ctl.loop
    assert loop.running()
    transport.cleanup()
    assert not loop.running()
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 1.0


def test_a_caller_that_is_no_threading_server_is_polled_for(messaging,
                                                            broker):
    """Only the threading executor's submit is known not to block."""
    transport = messaging.transport(broker)
    listener = transport._driver.listen(
        om.Target(topic='compute', server='host1', exchange='nova'), 1, None)
    got = []
    listener.start(got.extend)     # a plain function: not pushed to
    assert len(_poll_threads()) == 1
    client = messaging.client(transport, server='host1')
    client.cast({}, 'echo', value=1)
    assert broker.wait_for(lambda: len(got) == 1)
    assert got[0].message == {'method': 'echo', 'args': {'value': 1}}
    listener.stop()
    assert _poll_threads() == []
    listener.cleanup()
