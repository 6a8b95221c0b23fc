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

"""Notifications: listeners, pools, batches, priorities."""

import logging
import threading

import oslo_messaging as om
import pytest

from tests.unit import helpers

ADDRESSES = {
    'router': 'openstack.org/om/notify/anycast/nova/notifications.%s',
    'broker': 'unicast.nova.notifications.%s',
}


class BatchEndpoint(object):

    def __init__(self):
        self.batches = []
        self.lock = threading.Lock()

    def info(self, messages):
        with self.lock:
            self.batches.append([m['payload'] for m in messages])


class AllPriorities(object):

    def __init__(self):
        self.seen = []

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.seen.append(('info', payload))

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self.seen.append(('error', payload))


def notifier(transport):
    return om.Notifier(transport, 'compute.host1', driver='messagingv2',
                       topics=['notifications'])


@pytest.mark.parametrize('kind', ['router', 'broker'])
def test_listener_receives(messaging, make_peer, kind):
    peer = make_peer(kind)
    transport = messaging.notification_transport(peer)
    endpoint = helpers.NotifyEndpoint()
    messaging.listener(transport, endpoint)
    helpers.wait_receivers(peer, ADDRESSES[kind] % 'info')
    notifier(transport).info({}, 'compute.start', {'n': 1})
    assert endpoint.event.wait(5)
    assert endpoint.seen == [('compute.host1', 'compute.start', {'n': 1})]


def test_broker_stores_notifications_until_a_listener_comes(messaging,
                                                            broker):
    transport = messaging.notification_transport(broker)
    for i in range(3):
        notifier(transport).info({}, 'compute.start', {'n': i})
    # with send_window, info() returns before the broker has them
    assert broker.wait_for(
        lambda: broker.queue_depth(ADDRESSES['broker'] % 'info') == 3)
    endpoint = helpers.NotifyEndpoint()
    messaging.listener(transport, endpoint)
    assert broker.wait_for(lambda: len(endpoint.seen) == 3)
    assert sorted(s[2]['n'] for s in endpoint.seen) == [0, 1, 2]


def test_priorities_have_their_own_addresses(messaging, router):
    transport = messaging.notification_transport(router)
    endpoint = AllPriorities()
    listener = om.get_notification_listener(
        transport, [om.Target(topic='notifications')], [endpoint],
        executor='threading')
    listener.start()
    try:
        helpers.wait_receivers(router, ADDRESSES['router'] % 'info',
                               ADDRESSES['router'] % 'error')
        n = notifier(transport)
        n.info({}, 'e', 'i')
        n.error({}, 'e', 'x')
        assert router.wait_for(lambda: len(endpoint.seen) == 2)
        assert sorted(endpoint.seen) == [('error', 'x'), ('info', 'i')]
    finally:
        listener.stop()
        listener.wait()


@pytest.mark.parametrize('kind', ['router', 'broker'])
def test_pools_share_and_warn(messaging, make_peer, kind, caplog):
    peer = make_peer(kind)
    transport = messaging.notification_transport(peer)
    first, second = helpers.NotifyEndpoint(), helpers.NotifyEndpoint()
    # the old driver raised NotImplementedError here
    messaging.listener(transport, first, pool='pool-a')
    messaging.listener(transport, second, pool='pool-b')
    address = ADDRESSES[kind] % 'info'
    assert peer.wait_for(lambda: helpers.receivers(peer, address) == 2)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and 'Pool' in
                r.getMessage()]
    assert any('pool-a' in w and 'share' in w for w in warnings)
    assert any('pool-b' in w for w in warnings)
    n = notifier(transport)
    for i in range(4):
        n.info({}, 'compute.start', {'n': i})
    assert peer.wait_for(lambda: len(first.seen) + len(second.seen) == 4)
    # shared: each notification reached exactly one of the pools
    payloads = sorted(s[2]['n'] for s in first.seen + second.seen)
    assert payloads == [0, 1, 2, 3]


def test_batch_listener(messaging, broker):
    # a broker accepts on store; through a router each notification would
    # wait for the previous batch to be acknowledged
    transport = messaging.notification_transport(broker)
    n = notifier(transport)
    for i in range(4):
        n.info({}, 'compute.start', i)
    endpoint = BatchEndpoint()
    messaging.listener(transport, endpoint, batch=True)
    assert broker.wait_for(
        lambda: sum(len(b) for b in endpoint.batches) == 4)
    assert sorted(endpoint.batches) == [[0, 1], [2, 3]]


def test_batch_listener_with_pool(messaging, broker):
    transport = messaging.notification_transport(broker)
    endpoint = BatchEndpoint()
    messaging.listener(transport, endpoint, batch=True, pool='p')
    n = notifier(transport)
    n.info({}, 'compute.start', 'a')
    assert broker.wait_for(lambda: endpoint.batches == [['a']], 3)


def test_requeue_from_endpoint(messaging, broker):
    transport = messaging.notification_transport(broker)
    calls = []

    class Requeue(object):
        def info(self, ctxt, publisher_id, event_type, payload, metadata):
            calls.append(payload)
            if len(calls) == 1:
                return om.NotificationResult.REQUEUE
            return om.NotificationResult.HANDLED

    listener = om.get_notification_listener(
        transport, [om.Target(topic='notifications')], [Requeue()],
        executor='threading', allow_requeue=True)
    listener.start()
    try:
        notifier(transport).info({}, 'e', 'again')
        assert broker.wait_for(lambda: calls == ['again', 'again'])
        assert broker.wait_for(
            lambda: broker.queue_depth(ADDRESSES['broker'] % 'info') == 0)
    finally:
        listener.stop()
        listener.wait()


def test_notify_server_credit(messaging, broker):
    transport = messaging.notification_transport(broker,
                                                 notify_server_credit=3)
    endpoint = helpers.NotifyEndpoint()
    messaging.listener(transport, endpoint)
    address = ADDRESSES['broker'] % 'info'
    helpers.wait_receivers(broker, address)

    def credit():
        return broker._call(lambda: [
            li.link.credit for li in broker._engine.links.values()
            if li.role == 'receiver' and li.address == address])
    assert broker.wait_for(lambda: credit() == [3])
