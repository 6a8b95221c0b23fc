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

"""The test peers themselves, driven by raw proton blocking clients."""

import itertools
import os
import threading

import proton
from proton import reactor
from proton import utils
import pytest

from tests import peers

ANYCAST = 'openstack.org/om/rpc/anycast/nova/compute'
MULTICAST = 'openstack.org/om/rpc/multicast/nova/compute'
UNICAST = 'openstack.org/om/rpc/unicast/nova/compute/host1'

_NAMES = {
    proton.Delivery.ACCEPTED: 'accepted',
    proton.Delivery.REJECTED: 'rejected',
    proton.Delivery.RELEASED: 'released',
    proton.Delivery.MODIFIED: 'modified',
}


def pump(conn, seconds=0.1):
    """Let a blocking connection do its I/O (e.g. flush a disposition)."""
    try:
        conn.wait(lambda: False, timeout=seconds)
    except proton.Timeout:
        pass


class Producer(threading.Thread):
    """Sends messages on its own connection; outcomes in self.outcomes."""

    def __init__(self, url, address, messages, presettled=False, **kwargs):
        super(Producer, self).__init__(daemon=True)
        self.url, self.address, self.messages = url, address, messages
        self.presettled = presettled
        self.kwargs = kwargs
        self.outcomes = []
        self.error = None

    def run(self):
        try:
            conn = utils.BlockingConnection(self.url, timeout=3, **self.kwargs)
            options = reactor.AtMostOnce() if self.presettled else None
            sender = conn.create_sender(self.address, options=options)
            for message in self.messages:
                try:
                    dlv = sender.send(message)
                    self.outcomes.append(
                        None if self.presettled else
                        _NAMES[dlv.remote_state])
                except utils.SendException as exc:
                    self.outcomes.append(_NAMES.get(exc.state, exc.state))
            pump(conn)
            conn.close()
        except Exception as exc:
            self.error = exc

    def result(self, timeout=3.0):
        self.join(timeout)
        assert not self.is_alive(), 'producer still waiting for outcomes'
        if self.error is not None:
            raise self.error
        return self.outcomes


def send(url, address, *bodies, **kwargs):
    """Send bodies to address and return their outcomes."""
    producer = Producer(url, address,
                        [proton.Message(body=b) for b in bodies], **kwargs)
    producer.start()
    return producer


@pytest.fixture
def clients(make_peer):
    opened = []

    def connect(peer, **kwargs):
        kwargs.setdefault('timeout', 3)
        conn = utils.BlockingConnection(peer.url, **kwargs)
        opened.append(conn)
        return conn
    yield connect
    for conn in opened:
        try:
            # notice a socket the peer closed: close() would wait for ever
            pump(conn, 0.01)
            if not conn.disconnected:
                conn.close()
        except Exception:
            pass


@pytest.fixture
def router(make_peer):
    return make_peer('router')


@pytest.fixture
def broker(make_peer):
    return make_peer('broker')


_names = itertools.count()


def open_receiver(conn, address, **kwargs):
    """A receiver with a unique link name (proton derives it from address)."""
    return conn.create_receiver(address, name='r%d' % next(_names), **kwargs)


def consumers_ready(peer, address, count):
    return peer.wait_for(lambda: sum(
        1 for role, addr, _name, _cid in peer.links()
        if role == 'receiver' and addr == address) == count)


def receive_all(receiver, count, settle='accept'):
    bodies = []
    for _ in range(count):
        bodies.append(receiver.receive(timeout=2).body)
        getattr(receiver, settle)()
    return bodies


# ---- addressing tables ----------------------------------------------------

@pytest.mark.parametrize('address,distribution', [
    ('openstack.org/om/rpc/multicast/nova/compute', 'multicast'),
    ('openstack.org/om/notify/multicast/nova/x', 'multicast'),
    ('broadcast.nova.compute.all', 'multicast'),
    ('openstack.org/om/rpc/unicast/nova/compute/h1', 'closest'),
    ('exclusive.nova.compute.host1', 'closest'),
    ('unicast.nova.compute', 'closest'),
    ('unicast', 'closest'),
    ('openstack.org/om/notify/anycast/nova/notifications.info', 'balanced'),
    ('unicastfoo', 'balanced'),
    ('openstack.org/om/rpc', 'balanced'),
    ('amqp:/_topo/0/router-0/temp.x', 'balanced'),
])
def test_router_distribution_longest_prefix(address, distribution):
    assert peers.router_distribution(address) == distribution


def test_broker_node_types():
    assert peers.broker_node_type('exclusive.nova.compute.h') == 'queue'
    assert peers.broker_node_type('unicast.nova.compute') == 'queue'
    assert peers.broker_node_type('broadcast.nova.compute.all') == 'topic'
    assert peers.broker_node_type('nova.compute') is None


# ---- connection level -----------------------------------------------------

def test_open_frame_defaults(make_peer, clients):
    broker = make_peer('broker', version='1.39.0')
    conn = clients(broker, properties={'process': 'nova-compute'})
    props = conn.conn.remote_properties
    assert props[proton.symbol('product')] == 'qpid-cpp'
    assert props[proton.symbol('version')] == '1.39.0'
    assert conn.conn.remote_container.startswith('broker-')
    (info,) = broker.connections()
    assert info['properties'] == {'process': 'nova-compute'}
    assert info['container_id'] == conn.conn.container
    assert info['hostname'] == '127.0.0.1'


def test_router_offers_anonymous_relay(router, clients):
    conn = clients(router)
    props = conn.conn.remote_properties
    assert props[proton.symbol('product')] == 'qpid-dispatch-router'
    assert 'ANONYMOUS-RELAY' in conn.conn.remote_offered_capabilities


def test_no_properties_when_product_empty(make_peer, clients):
    peer = make_peer(product='', container_id='bare')
    conn = clients(peer)
    assert not conn.conn.remote_properties
    assert conn.conn.remote_container == 'bare'


def test_client_without_sasl_layer(router, clients):
    conn = clients(router, sasl_enabled=False)
    assert conn.conn.remote_container == router.container_id


def test_sasl_plain_success(make_peer, clients):
    peer = make_peer(users={'nova': 'secret'})
    conn = clients(peer, user='nova', password='secret',
                   allowed_mechs='PLAIN')
    conn.create_sender(ANYCAST)
    (info,) = peer.connections()
    assert info['user'] == 'nova'


@pytest.mark.parametrize('credentials', [
    {'user': 'nova', 'password': 'wrong', 'allowed_mechs': 'PLAIN'},
    {'user': 'glance', 'password': 'secret', 'allowed_mechs': 'PLAIN'},
    {'allowed_mechs': 'ANONYMOUS'},
    {'sasl_enabled': False},
])
def test_sasl_failures(make_peer, clients, credentials):
    peer = make_peer(users={'nova': 'secret'})
    with pytest.raises(proton.ConnectionException):
        clients(peer, **credentials)
    assert peer.connections() == []


def test_idle_timeout_honoured(router, clients):
    conn = clients(router, heartbeat=0.3)
    pump(conn, 1.0)     # silent application: only heartbeats keep it up
    conn.create_sender(ANYCAST)
    assert len(router.connections()) == 1


# ---- router ---------------------------------------------------------------

def test_router_anycast_round_robin(router, clients):
    conn = clients(router)
    r1 = open_receiver(conn, ANYCAST, credit=10)
    r2 = open_receiver(conn, ANYCAST, credit=10)
    pump(conn)
    send(router.url, ANYCAST, 1, 2, 3, 4, presettled=True).result()
    assert receive_all(r1, 2) == [1, 3]
    assert receive_all(r2, 2) == [2, 4]


def test_router_multicast_copies(router, clients):
    conn = clients(router)
    r1 = open_receiver(conn, MULTICAST, credit=10)
    r2 = open_receiver(conn, MULTICAST, credit=10)
    # the router accepts on behalf of the consumers
    assert send(router.url, MULTICAST, 'fan').result() == ['accepted']
    assert r1.receive(timeout=2).body == 'fan'
    assert r2.receive(timeout=2).body == 'fan'


def test_router_multicast_without_consumer_released(router):
    assert send(router.url, MULTICAST, 'fan').result() == ['released']


def test_router_closest_end_to_end_accept(router, clients):
    conn = clients(router)
    receiver = open_receiver(conn, UNICAST, credit=10)
    producer = send(router.url, UNICAST, 'call')
    assert receiver.receive(timeout=2).body == 'call'
    assert producer.is_alive()      # no outcome before the consumer's
    receiver.accept()
    pump(conn)
    assert producer.result() == ['accepted']


def test_router_released_without_consumer(router):
    assert send(router.url, ANYCAST, 'lost').result() == ['released']
    (address, message, presettled) = router.received[0]
    assert (address, message.body, presettled) == (ANYCAST, 'lost', False)


def test_router_drops_presettled_without_consumer(router, clients):
    send(router.url, ANYCAST, 'gone', presettled=True).result()
    assert router.wait_for(lambda: len(router.received) == 1)
    assert router.received[0][2] is True
    receiver = clients(router).create_receiver(ANYCAST, credit=1)
    with pytest.raises(proton.Timeout):
        receiver.receive(timeout=0.2)


@pytest.mark.parametrize('settle,outcome', [
    ('reject', 'rejected'),
    ('release', 'modified'),
])
def test_router_propagates_consumer_outcome(router, clients, settle, outcome):
    conn = clients(router)
    receiver = open_receiver(conn, ANYCAST, credit=1)
    producer = send(router.url, ANYCAST, 'x')
    receiver.receive(timeout=2)
    getattr(receiver, settle)()
    pump(conn)
    assert producer.result() == [outcome]


def test_router_consumer_lost_before_outcome(router, clients):
    conn = clients(router)
    receiver = open_receiver(conn, ANYCAST, credit=1)
    producer = send(router.url, ANYCAST, 'x')
    receiver.receive(timeout=2)
    receiver.close()
    assert producer.result() == ['modified']


def test_router_waits_for_consumer_credit(router, clients):
    conn = clients(router)
    receiver = open_receiver(conn, ANYCAST, credit=0)
    producer = send(router.url, ANYCAST, 'later')
    pump(conn, 0.2)
    assert producer.is_alive()
    receiver.link.flow(1)
    assert receiver.receive(timeout=2).body == 'later'
    receiver.accept()
    pump(conn)
    assert producer.result() == ['accepted']


def test_router_dynamic_source_round_trip(router, clients):
    conn = clients(router)
    replies = open_receiver(conn, None, dynamic=True, credit=5)
    address = replies.remote_source.address
    assert address.startswith('amqp:/_topo/0/%s/temp.' % router.container_id)
    assert send(router.url, address, 'reply', presettled=True).result()
    assert replies.receive(timeout=2).body == 'reply'
    (link,) = [lk for lk in router.links() if lk[0] == 'receiver']
    assert link[1] == address


def test_router_without_dynamic_sources(make_peer, clients):
    peer = make_peer(dynamic_sources=False)
    with pytest.raises(utils.LinkDetached):
        clients(peer).create_receiver(None, dynamic=True)


def test_router_anonymous_relay(router, clients):
    conn = clients(router)
    receiver = open_receiver(conn, ANYCAST, credit=5)
    sender = conn.create_sender(None, options=reactor.AtMostOnce())
    sender.send(proton.Message(address=ANYCAST, body='relayed'))
    assert receiver.receive(timeout=2).body == 'relayed'
    assert router.received[0][0] == ANYCAST
    assert ('sender', None) in [lk[:2] for lk in router.links()]


def test_router_restart_comes_back_empty(router, clients):
    conn = clients(router)
    open_receiver(conn, ANYCAST, credit=5)
    port = router.port
    router.restart()
    assert router.port == port
    assert router.links() == []
    assert send(router.url, ANYCAST, 'x').result() == ['released']


# ---- broker ---------------------------------------------------------------

def test_broker_stores_until_consumer_attaches(broker, clients):
    queue = 'unicast.nova.compute'
    assert send(broker.url, queue, 1, 2, 3).result() == ['accepted'] * 3
    assert broker.queue_depth(queue) == 3
    receiver = clients(broker).create_receiver(queue, credit=10)
    assert receive_all(receiver, 3) == [1, 2, 3]
    assert broker.wait_for(lambda: broker.queue_depth(queue) == 0)


def test_broker_queue_shared_round_robin(broker, clients):
    queue = 'exclusive.nova.compute.host1'
    conn = clients(broker)
    r1 = open_receiver(conn, queue, credit=10)
    r2 = open_receiver(conn, queue, credit=10)
    pump(conn)
    send(broker.url, queue, 1, 2, 3, 4, presettled=True).result()
    assert receive_all(r1, 2) == [1, 3]
    assert receive_all(r2, 2) == [2, 4]


def test_broker_released_goes_back_to_head(broker, clients):
    queue = 'unicast.nova.compute'
    send(broker.url, queue, 'a', 'b').result()
    conn = clients(broker)
    receiver = open_receiver(conn, queue, credit=0)   # one at a time
    assert receiver.receive(timeout=2).body == 'a'
    receiver.release(delivered=False)
    pump(conn)      # the disposition first: proton sends flow before it
    assert receiver.receive(timeout=2).body == 'a'
    receiver.reject()       # rejected: dropped
    pump(conn)
    assert receiver.receive(timeout=2).body == 'b'
    receiver.accept()
    pump(conn)
    assert broker.queue_depth(queue) == 0


def test_broker_topic_copies(broker, clients):
    topic = 'broadcast.nova.compute.all'
    assert send(broker.url, topic, 'nobody').result() == ['accepted']
    conn = clients(broker)
    r1 = open_receiver(conn, topic, credit=5)
    r2 = open_receiver(conn, topic, credit=5)
    assert send(broker.url, topic, 'all').result() == ['accepted']
    assert r1.receive(timeout=2).body == 'all'
    assert r2.receive(timeout=2).body == 'all'
    with pytest.raises(proton.Timeout):
        r1.receive(timeout=0.2)     # 'nobody' was dropped


@pytest.mark.parametrize('role', ['sender', 'receiver'])
def test_broker_unknown_address_not_found(broker, clients, role):
    conn = clients(broker)
    with pytest.raises(utils.LinkDetached) as exc:
        if role == 'sender':
            conn.create_sender('nova.compute')
        else:
            open_receiver(conn, 'nova.compute')
    assert 'amqp:not-found' in str(exc.value)


def test_broker_anonymous_relay_unknown_address_rejected(broker, clients):
    sender = clients(broker).create_sender(None)
    with pytest.raises(utils.SendException) as exc:
        sender.send(proton.Message(address='nova.compute', body='x'))
    assert exc.value.state == proton.Delivery.REJECTED


def test_broker_dynamic_source_round_trip(broker, clients):
    replies = clients(broker).create_receiver(None, dynamic=True, credit=5)
    address = replies.remote_source.address
    assert send(broker.url, address, 'reply').result() == ['accepted']
    assert replies.receive(timeout=2).body == 'reply'


def test_broker_restart_keeps_queues(broker, clients):
    queue = 'exclusive.nova.compute.host1'
    send(broker.url, queue, 'kept', 'too').result()
    receiver = clients(broker).create_receiver(queue, credit=1)
    assert receiver.receive(timeout=2).body == 'kept'   # never settled
    port = broker.port
    broker.restart()
    assert broker.port == port
    receiver = clients(broker).create_receiver(queue, credit=5)
    assert receive_all(receiver, 2) == ['kept', 'too']


# ---- fault injection ------------------------------------------------------

def test_drop_connections(router, clients):
    conn = clients(router)
    receiver = open_receiver(conn, ANYCAST, credit=1)
    router.drop_connections()
    with pytest.raises((proton.ConnectionException, utils.LinkDetached)):
        receiver.receive(timeout=2)
    assert router.connections() == []
    assert router.links() == []
    conn2 = clients(router)
    conn2.create_sender(ANYCAST)
    assert len(router.connections()) == 1


def test_stop_closes_sockets(make_peer, clients):
    peer = make_peer()
    conn = clients(peer)
    receiver = open_receiver(conn, ANYCAST, credit=1)
    peer.stop()
    with pytest.raises((proton.ConnectionException, utils.LinkDetached)):
        receiver.receive(timeout=2)
    with pytest.raises(proton.ConnectionException):
        clients(peer)


def test_refuse_attach(router, clients):
    router.refuse_attach = lambda address, role: (
        'amqp:unauthorized-access' if role == 'sender' else None)
    conn = clients(router)
    open_receiver(conn, ANYCAST)
    with pytest.raises(utils.LinkDetached) as exc:
        conn.create_sender(ANYCAST)
    assert 'amqp:unauthorized-access' in str(exc.value)


def test_release_all(router, clients):
    conn = clients(router)
    receiver = open_receiver(conn, ANYCAST, credit=5)
    router.release_all = True
    assert send(router.url, ANYCAST, 'x').result() == ['released']
    with pytest.raises(proton.Timeout):
        receiver.receive(timeout=0.2)


def test_outcome_override(broker):
    seen = []

    def override(address, message):
        seen.append((address, message.body))
        return 'rejected' if message.body == 'poison' else None
    broker.outcome_override = override
    queue = 'unicast.nova.compute'
    assert send(broker.url, queue, 'ok', 'poison').result() == [
        'accepted', 'rejected']
    assert seen == [(queue, 'ok'), (queue, 'poison')]
    assert broker.queue_depth(queue) == 1


def test_inject(router, clients):
    conn = clients(router)
    receiver = open_receiver(conn, UNICAST, credit=5)
    assert router.inject(UNICAST, proton.Message(body='raw'),
                         settled=True) is None
    assert receiver.receive(timeout=2).body == 'raw'
    receiver.accept()
    result = []
    injector = threading.Thread(target=lambda: result.append(
        router.inject(UNICAST, proton.Message(body='raw2'))))
    injector.start()
    assert receiver.receive(timeout=2).body == 'raw2'
    receiver.reject()
    pump(conn)
    injector.join(2)
    assert result == ['rejected']
    assert router.inject('nowhere', proton.Message(body='x')) == 'released'
    assert router.received == []


def test_peers_are_independent(make_peer, clients):
    a, b = make_peer(), make_peer()
    assert a.port != b.port and a.container_id != b.container_id
    consumer = open_receiver(clients(a), ANYCAST, credit=1)
    assert send(b.url, ANYCAST, 'x').result() == ['released']
    assert send(a.url, ANYCAST, 'y', presettled=True).result()
    assert consumer.receive(timeout=2).body == 'y'


def test_failing_callbacks_are_visible(router, clients):
    def boom(*args):
        raise ValueError('test bug')
    router.refuse_attach = boom
    with pytest.raises(utils.LinkDetached) as exc:
        clients(router).create_sender(ANYCAST)
    assert 'amqp:internal-error' in str(exc.value)
    router.refuse_attach = None
    router.outcome_override = boom
    assert send(router.url, ANYCAST, 'x').result() == ['rejected']


def test_start_stop_leaks_no_descriptors():
    peer = peers.Peer('broker')
    peer.start().stop()
    before = len(os.listdir('/proc/self/fd'))
    for _ in range(10):
        peer.start()
        peer.restart()
        peer.stop()
    assert len(os.listdir('/proc/self/fd')) <= before
