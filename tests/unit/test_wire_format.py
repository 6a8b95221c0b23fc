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

"""What the driver puts on the wire: the old driver's format, kept."""

import json
import os
import threading
import time
import uuid

import oslo_messaging as om
import pytest

from tests.unit import helpers

TOPIC = 'openstack.org/om/rpc/anycast/nova/compute'
SERVER = 'openstack.org/om/rpc/unicast/nova/compute/host1'
FANOUT = 'openstack.org/om/rpc/multicast/nova/compute'
NOTIFY = 'openstack.org/om/notify/anycast/nova/notifications.info'


@pytest.fixture
def rpc(messaging, router):
    """(transport, client, endpoint) with a server on nova/compute/host1."""
    transport = messaging.transport(router)
    _server, endpoint = messaging.server(transport)
    helpers.wait_receivers(router, TOPIC, SERVER, FANOUT)
    return transport, messaging.client(transport), endpoint


def reply_address(peer):
    dynamic = [a for a in helpers.receivers(peer)
               if a.startswith('amqp:/_topo/')]
    assert len(dynamic) == 1, dynamic
    return dynamic[0]


def only(messages):
    assert len(messages) == 1, messages
    return messages[0]


def test_call_request(rpc, router):
    _transport, client, _ep = rpc
    started = time.time()
    assert client.call({'user': 'u1'}, 'echo', value=[1, 'a']) == [1, 'a']
    message, settled = only(helpers.received_on(router, TOPIC))
    # one AMQP-value section holding a str of JSON, nothing else
    assert isinstance(message.body, str)
    assert json.loads(message.body) == {
        'request': {'method': 'echo', 'args': {'value': [1, 'a']}},
        'context': {'user': 'u1'}}
    assert not message.properties
    assert message.subject is None
    # uuid4 hex id, reply_to the dynamic reply source, ttl from the timeout
    assert uuid.UUID(hex=message.id).version == 4
    assert message.id == uuid.UUID(hex=message.id).hex
    assert message.reply_to == reply_address(router)
    assert message.ttl == pytest.approx(5, abs=0.01)
    assert started <= message.expiry_time <= started + 6
    assert not settled


def test_call_ids_are_unique(rpc, router):
    _transport, client, _ep = rpc
    for i in range(3):
        client.call({}, 'echo', value=i)
    ids = [m.id for m, _s in helpers.received_on(router, TOPIC)]
    assert len(set(ids)) == 3


def test_namespace_and_version(rpc, router):
    transport, _client, _ep = rpc
    target = om.Target(topic='compute', exchange='nova', version='1.0',
                       namespace=None)
    client = om.get_rpc_client(transport, target, timeout=5)
    assert client.call({}, 'echo', value=1) == 1
    message, _s = only(helpers.received_on(router, TOPIC))
    request = json.loads(message.body)['request']
    assert request['version'] == '1.0'
    assert request['method'] == 'echo'


def test_call_monitor_timeout_in_body(rpc, router):
    _transport, client, _ep = rpc
    client = client.prepare(call_monitor_timeout=2)
    assert client.call({}, 'echo', value=1) == 1
    message, _s = only(helpers.received_on(router, TOPIC))
    assert json.loads(message.body)['call_monitor_timeout'] == 2


def test_cast_request(rpc, router):
    _transport, client, endpoint = rpc
    client.cast({'c': 1}, 'echo', value='x')
    assert endpoint.event.wait(5)
    message, settled = only(helpers.received_on(router, TOPIC))
    assert json.loads(message.body) == {
        'request': {'method': 'echo', 'args': {'value': 'x'}},
        'context': {'c': 1}}
    assert message.reply_to is None
    assert settled


def test_reply_format_and_correlation(rpc, router):
    _transport, client, _ep = rpc
    assert client.call({}, 'echo', value={'k': 'v'}) == {'k': 'v'}
    request, _s = only(helpers.received_on(router, TOPIC))
    reply, settled = only(helpers.received_on(router, reply_address(router)))
    assert reply.correlation_id == request.id
    assert isinstance(reply.body, str)
    assert json.loads(reply.body) == {'response': {'k': 'v'}}
    assert settled


def test_failure_reply(rpc, router):
    _transport, client, _ep = rpc
    with pytest.raises(ValueError) as info:
        client.call({}, 'fail', value='boom')
    assert 'failing on purpose: boom' in str(info.value)
    reply, _s = only(helpers.received_on(router, reply_address(router)))
    body = json.loads(reply.body)
    assert list(body) == ['failure']
    assert isinstance(body['failure'], str)
    assert json.loads(body['failure'])['class'] == 'ValueError'


def test_concurrent_calls_get_their_own_reply(messaging, router):
    transport = messaging.transport(router)
    messaging.server(transport, endpoints=[helpers.Echo(delay=0.05)])
    helpers.wait_receivers(router, TOPIC)
    client = messaging.client(transport)
    results, errors = {}, []

    def call(i):
        try:
            results[i] = client.call({}, 'echo', value=i)
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert results == dict((i, i) for i in range(8))


class _Context(object):
    """The notifier drops plain dict contexts; real ones redact."""

    def redacted_copy(self):
        return {'req': 'r1'}


@pytest.mark.parametrize('driver,enveloped', [('messagingv2', True),
                                              ('messaging', False)])
def test_notification_body(messaging, router, driver, enveloped):
    transport = messaging.notification_transport(router)
    endpoint = helpers.NotifyEndpoint()
    messaging.listener(transport, endpoint, exchange='nova')
    helpers.wait_receivers(router, NOTIFY)
    notifier = om.Notifier(transport, 'compute.host1', driver=driver,
                           topics=['notifications'])
    notifier.info(_Context(), 'compute.start', {'n': 1})
    assert endpoint.event.wait(5)
    assert endpoint.seen == [('compute.host1', 'compute.start', {'n': 1})]
    message, settled = only(helpers.received_on(router, NOTIFY))
    assert isinstance(message.body, str)
    body = json.loads(message.body)
    assert set(body) == {'request', 'context'}
    assert body['context'] == {'req': 'r1'}
    request = body['request']
    if enveloped:
        assert set(request) == {'oslo.version', 'oslo.message'}
        assert request['oslo.version'] == '2.0'
        request = json.loads(request['oslo.message'])
    else:
        assert 'oslo.version' not in request
    assert request['event_type'] == 'compute.start'
    assert request['payload'] == {'n': 1}
    assert request['priority'] == 'INFO'
    assert request['publisher_id'] == 'compute.host1'
    assert message.durable
    assert not settled


def test_open_properties(messaging, router):
    transport = messaging.transport(router)
    messaging.server(transport)
    helpers.wait_receivers(router, TOPIC)
    (conn,) = router.connections()
    props = conn['properties']
    assert set(props) >= {'process', 'pid', 'node'}
    assert props['pid'] == os.getpid()


def test_container_name_option(messaging, router):
    messaging.set(container_name='my-container-1')
    transport = messaging.transport(router)
    messaging.server(transport)
    helpers.wait_receivers(router, TOPIC)
    assert [c['container_id'] for c in router.connections()] == [
        'my-container-1']


def test_container_ids_differ_per_transport(messaging, router):
    for _ in range(2):
        messaging.server(messaging.transport(router))
    helpers.wait_receivers(router, TOPIC)
    assert router.wait_for(lambda: len(router.connections()) == 2)
    ids = [c['container_id'] for c in router.connections()]
    assert len(set(ids)) == 2


def test_call_monitor_heartbeats(messaging, router):
    transport = messaging.transport(router)
    messaging.server(transport, endpoints=[helpers.Echo(delay=2.3)])
    helpers.wait_receivers(router, TOPIC)
    # oslo.messaging's server beats every call_monitor_timeout / 2 s
    client = messaging.client(transport).prepare(call_monitor_timeout=2)
    assert client.call({}, 'echo', value='slow') == 'slow'
    request, _s = only(helpers.received_on(router, TOPIC))
    to_caller = helpers.received_on(router, reply_address(router))
    beats = [(m, s) for m, s in to_caller if m.body is None]
    replies = [(m, s) for m, s in to_caller if m.body is not None]
    assert len(beats) >= 2
    for message, settled in beats:
        assert message.correlation_id == request.id
        assert settled
    assert len(replies) == 1


def test_call_monitor_without_heartbeats_times_out(messaging, router):
    transport = messaging.transport(router)
    messaging.server(transport, endpoints=[helpers.Echo(delay=2)])
    helpers.wait_receivers(router, TOPIC)
    # with 1 s the server sends no heartbeat (interval under 1 s)
    client = messaging.client(transport).prepare(call_monitor_timeout=1)
    started = time.monotonic()
    with pytest.raises(om.MessagingTimeout) as info:
        client.call({}, 'echo', value='slow')
    assert 1 <= time.monotonic() - started < 2.5
    assert 'heartbeat' in str(info.value)


def test_idle_sender_links_are_closed(messaging, router):
    transport = messaging.transport(router, default_sender_link_timeout=1)
    messaging.server(transport)
    helpers.wait_receivers(router, TOPIC)
    assert messaging.client(transport).call({}, 'echo', value=1) == 1

    def senders():
        return [a for r, a, _n, _c in router.links() if r == 'sender']
    assert TOPIC in senders()
    assert router.wait_for(lambda: TOPIC not in senders(), 3)
    # and a new one is made on demand
    assert messaging.client(transport).call({}, 'echo', value=2) == 2
