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

"""Malformed messages from the bus: rejected, and the server keeps going."""

import json
import logging

import oslo_messaging as om
import proton
import pytest

from tests.unit import helpers

TOPIC = 'openstack.org/om/rpc/anycast/nova/compute'
SERVER = 'openstack.org/om/rpc/unicast/nova/compute/host1'
FANOUT = 'openstack.org/om/rpc/multicast/nova/compute'
NOTIFY = 'openstack.org/om/notify/anycast/nova/notifications.info'

GOOD_REQUEST = {'request': {'method': 'echo', 'args': {'value': 'ok'}},
                'context': {}}

MALFORMED = {
    'not-json': 'this is not JSON',
    'json-list': '[1, 2, 3]',
    'json-string': '"request"',
    'no-request': json.dumps({'context': {}}),
    'binary-body': b'{"request": {"method": "echo"}, "context": {}}',
    'context-not-object': json.dumps(
        {'request': {'method': 'echo', 'args': {}}, 'context': [1, 2]}),
    'request-not-object': json.dumps({'request': [1], 'context': {}}),
    'bad-envelope': json.dumps(
        {'request': {'oslo.version': '2.0', 'oslo.message': 5},
         'context': {}}),
    'envelope-not-json': json.dumps(
        {'request': {'oslo.version': '2.0', 'oslo.message': '{nope'},
         'context': {}}),
    'monitor-not-number': json.dumps(dict(GOOD_REQUEST,
                                          call_monitor_timeout='soon')),
    'list-body': ['request', 'context'],
    'no-body': None,
}


@pytest.fixture
def served(messaging, router):
    transport = messaging.transport(router)
    _server, endpoint = messaging.server(transport)
    helpers.wait_receivers(router, TOPIC, SERVER, FANOUT)
    return messaging.client(transport), endpoint


@pytest.mark.parametrize('name', sorted(MALFORMED))
def test_malformed_request_rejected(served, router, name, caplog):
    client, endpoint = served
    outcome = router.inject(SERVER, proton.Message(body=MALFORMED[name]))
    assert outcome == 'rejected'
    assert endpoint.calls == []
    assert any('Rejected a malformed message' in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    # the server still serves
    assert client.prepare(server='host1').call(
        {}, 'echo', value='next') == 'next'
    assert endpoint.calls == ['next']


def test_many_malformed_requests_do_not_eat_credit(messaging, router):
    transport = messaging.transport(router, rpc_server_credit=2)
    _server, endpoint = messaging.server(transport)
    helpers.wait_receivers(router, TOPIC, SERVER, FANOUT)
    for _ in range(5):
        assert router.inject(SERVER, proton.Message(body='junk')) == \
            'rejected'
    client = messaging.client(transport, server='host1')
    assert client.call({}, 'echo', value='next') == 'next'


def test_well_formed_injected_request_accepted(served, router):
    _client, endpoint = served
    outcome = router.inject(TOPIC, proton.Message(
        body=json.dumps(GOOD_REQUEST)))
    assert outcome == 'accepted'
    assert router.wait_for(lambda: endpoint.calls == ['ok'])


def test_malformed_notification_rejected(messaging, router):
    transport = messaging.notification_transport(router)
    endpoint = helpers.NotifyEndpoint()
    messaging.listener(transport, endpoint, exchange='nova')
    helpers.wait_receivers(router, NOTIFY)
    assert router.inject(NOTIFY, proton.Message(body='[]')) == 'rejected'
    good = {'message_id': 'm', 'publisher_id': 'p', 'priority': 'INFO',
            'event_type': 'e', 'payload': {'a': 1}, 'timestamp': 't'}
    outcome = router.inject(NOTIFY, proton.Message(body=json.dumps(
        {'request': {'oslo.version': '2.0',
                     'oslo.message': json.dumps(good)},
         'context': {}})))
    assert outcome == 'accepted'
    assert endpoint.event.wait(5)
    assert endpoint.seen == [('p', 'e', {'a': 1})]


def _reply_address(peer):
    (address,) = [a for a in helpers.receivers(peer)
                  if a.startswith('amqp:/_topo/')]
    return address


@pytest.mark.parametrize('correlation_id', ['unknown-id', None])
def test_reply_for_unknown_call_dropped(served, router, caplog,
                                        correlation_id):
    client, _endpoint = served
    assert client.call({}, 'echo', value=1) == 1
    stray = proton.Message(body=json.dumps({'response': 'stray'}))
    stray.correlation_id = correlation_id
    caplog.clear()
    assert router.inject(_reply_address(router), stray) == 'accepted'
    assert router.wait_for(lambda: any(
        'Dropped a reply' in r.getMessage() for r in caplog.records))
    assert client.call({}, 'echo', value=2) == 2


def test_malformed_reply_fails_the_call(served, router):
    client, _endpoint = served
    # the reply to the next call is replaced by garbage
    requests = []

    def hijack(address, message):
        if address == TOPIC:
            requests.append(message)
            bad = proton.Message(body='not json')
            bad.correlation_id = message.id
            router.inject(message.reply_to, bad, settled=True)
            return 'accepted'
        return None
    router.outcome_override = hijack
    with pytest.raises(om.MessageDeliveryFailure) as info:
        client.call({}, 'echo', value=1)
    assert 'malformed reply' in str(info.value)
    assert len(requests) == 1
