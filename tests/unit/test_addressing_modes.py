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

"""The addresses on the wire for each addressing mode (README: "Addresses").

RPC servers and clients go through the public oslo.messaging API; the
addresses are read back from the peer's links and received messages.
"""

import oslo_messaging as om
import pytest

from oslo_messaging_amqp1 import addressing
from tests.unit import helpers

ROUTABLE = {
    'topic': 'openstack.org/om/rpc/anycast/nova/compute',
    'server': 'openstack.org/om/rpc/unicast/nova/compute/host1',
    'fanout': 'openstack.org/om/rpc/multicast/nova/compute',
    'notify': 'openstack.org/om/notify/anycast/nova/notifications.info',
}
LEGACY = {
    'topic': 'unicast.nova.compute',
    'server': 'exclusive.nova.compute.host1',
    'fanout': 'broadcast.nova.compute.all',
    'notify': 'unicast.nova.notifications.info',
}


def _vhost(table, vhost, legacy):
    """The table's addresses with a pseudo vhost inserted."""
    if legacy:
        return dict((k, v.replace('.nova.', '.%s.nova.' % vhost, 1))
                    for k, v in table.items())
    return dict((k, v.replace('/nova/', '/%s/nova/' % vhost, 1))
                for k, v in table.items())


def exercise(messaging, peer, expected, vhost='', exchange='nova'):
    """RPC server, three kinds of send and a notification; check addresses.

    ``exchange`` None leaves the exchange out of targets (the transport's
    default exchange applies).  Notifier targets never name an exchange:
    the conf fixture sets control_exchange to nova.
    """
    url = helpers.url_of(peer, vhost)
    transport = messaging.transport(url)
    server, endpoint = messaging.server(transport, exchange=exchange)
    helpers.wait_receivers(peer, expected['topic'], expected['server'],
                           expected['fanout'])
    client = messaging.client(transport, exchange=exchange)
    assert client.call({}, 'echo', value='topic') == 'topic'
    assert client.prepare(server='host1').call(
        {}, 'echo', value='server') == 'server'
    client.prepare(fanout=True).cast({}, 'echo', value='fanout')
    assert peer.wait_for(lambda: 'fanout' in endpoint.calls)

    ntransport = messaging.notification_transport(url)
    listener_ep = helpers.NotifyEndpoint()
    messaging.listener(ntransport, listener_ep, exchange=exchange)
    helpers.wait_receivers(peer, expected['notify'])
    notifier = om.Notifier(ntransport, 'compute.host1',
                           driver='messagingv2', topics=['notifications'])
    notifier.info({}, 'compute.start', {'n': 1})
    assert listener_ep.event.wait(5)
    assert listener_ep.seen == [('compute.host1', 'compute.start', {'n': 1})]

    sent_to = set(a for a, _m, _s in peer.received)
    for kind in ('topic', 'server', 'fanout', 'notify'):
        assert expected[kind] in sent_to, (kind, sorted(sent_to))
    listening = set(helpers.receivers(peer))
    for kind in ('topic', 'server', 'fanout', 'notify'):
        assert expected[kind] in listening, (kind, sorted(listening))
    return sent_to


def test_router_routable(messaging, router):
    sent_to = exercise(messaging, router, ROUTABLE)
    # nothing legacy-looking went out, and replies used the dynamic address
    assert not [a for a in sent_to if a.startswith(('unicast', 'exclusive',
                                                    'broadcast'))]


@pytest.mark.parametrize('product', ['skupper-router',
                                     'apache-activemq-artemis'])
def test_other_products_are_routable(messaging, make_peer, product):
    exercise(messaging, make_peer('router', product=product), ROUTABLE)


@pytest.mark.parametrize('product', ['qpid-cpp', ''])
def test_broker_legacy(messaging, make_peer, product):
    exercise(messaging, make_peer('broker', product=product), LEGACY)


def test_default_exchange_from_control_exchange(messaging, router):
    exercise(messaging, router, ROUTABLE, exchange=None)


def test_default_rpc_and_notification_exchange_options(messaging, router,
                                                       conf):
    conf.set_override('control_exchange', 'ignored')
    messaging.set(default_rpc_exchange='nova',
                  default_notification_exchange='nova')
    exercise(messaging, router, ROUTABLE, exchange=None)


def test_explicit_exchange_beats_defaults(messaging, router):
    messaging.set(default_rpc_exchange='other')
    exercise(messaging, router, ROUTABLE, exchange='nova')


def test_pseudo_vhost_routable(messaging, router):
    expected = _vhost(ROUTABLE, 'vh1', legacy=False)
    assert expected['topic'] == 'openstack.org/om/rpc/anycast/vh1/nova/compute'
    exercise(messaging, router, expected, vhost='vh1')


def test_pseudo_vhost_legacy(messaging, broker):
    expected = _vhost(LEGACY, 'vh1', legacy=True)
    assert expected['topic'] == 'unicast.vh1.nova.compute'
    exercise(messaging, broker, expected, vhost='vh1')


def test_vhost_as_open_hostname_without_pseudo_vhost(messaging, router):
    messaging.set(pseudo_vhost=False)
    exercise(messaging, router, ROUTABLE, vhost='vh1')
    assert [c['hostname'] for c in router.connections()] == ['vh1'] * 2


def test_open_hostname_is_the_host_with_pseudo_vhost(messaging, router):
    exercise(messaging, router, _vhost(ROUTABLE, 'vh1', False), vhost='vh1')
    assert set(c['hostname'] for c in router.connections()) == {'127.0.0.1'}


@pytest.mark.parametrize('mode,kind,product,expected', [
    ('legacy', 'router', None, LEGACY),
    ('routable', 'router', '', ROUTABLE),
    ('routable', 'router', 'qpid-cpp', ROUTABLE),
    ('legacy', 'broker', 'qpid-dispatch-router', LEGACY),
])
def test_addressing_mode_beats_product(messaging, make_peer, mode, kind,
                                       product, expected):
    messaging.set(addressing_mode=mode)
    exercise(messaging, make_peer(kind, product=product), expected)


def test_custom_legacy_prefixes(messaging, router):
    messaging.set(addressing_mode='legacy', server_request_prefix='srv',
                  group_request_prefix='grp', broadcast_prefix='all')
    exercise(messaging, router, {
        'topic': 'grp.nova.compute',
        'server': 'srv.nova.compute.host1',
        'fanout': 'all.nova.compute.all',
        'notify': 'grp.nova.notifications.info',
    })


def test_custom_routable_prefixes(messaging, router):
    messaging.set(rpc_address_prefix='acme/rpc',
                  notify_address_prefix='acme/notify',
                  anycast_address='any', unicast_address='one',
                  multicast_address='all')
    exercise(messaging, router, {
        'topic': 'acme/rpc/any/nova/compute',
        'server': 'acme/rpc/one/nova/compute/host1',
        'fanout': 'acme/rpc/all/nova/compute',
        'notify': 'acme/notify/any/nova/notifications.info',
    })


def test_replies_use_the_dynamic_source(messaging, router):
    transport = messaging.transport(router)
    messaging.server(transport)
    helpers.wait_receivers(router, ROUTABLE['server'])
    assert messaging.client(transport).call({}, 'echo', value=1) == 1
    dynamic = [a for a in helpers.receivers(router)
               if a.startswith('amqp:/_topo/')]
    assert len(dynamic) == 1
    replies = [m for a, m, _s in router.received if a == dynamic[0]]
    assert len(replies) == 1


@pytest.mark.parametrize('mode', ['legacy', 'routable', 'rabbitmq'])
def test_a_send_route_is_built_once_per_target(conf, monkeypatch, mode):
    """Every send asks for its route; the answer is kept per target."""
    def make():
        return addressing.make_addresser(
            mode, conf.oslo_messaging_amqp, 'nova', None,
            {'product': 'RabbitMQ', 'version': '4.0.5'})
    addresser, fresh = make(), make()
    targets = [('rpc', om.Target(topic='compute')),
               ('rpc', om.Target(topic='compute', server='host1')),
               ('rpc', om.Target(topic='compute', fanout=True)),
               ('rpc', om.Target(topic='compute', exchange='other')),
               ('notify', om.Target(topic='notifications.info'))]
    built = []
    for name in ('rpc_send', 'notify_send'):
        def counted(target, _build=getattr(addresser, name)):
            built.append(target)
            return _build(target)
        monkeypatch.setattr(addresser, name, counted)
    for _round in range(3):
        for kind, target in targets:
            want = getattr(fresh, kind + '_send')(target)
            assert addresser.send_route(kind, target) == want
    assert len(built) == len(targets)
    # a new but equal target finds the same route
    same = addresser.send_route('rpc', om.Target(topic='compute'))
    assert same is addresser.send_route('rpc', om.Target(topic='compute'))
    assert len(built) == len(targets)


def test_send_routes_are_kept_for_a_bounded_number_of_targets(conf,
                                                              monkeypatch):
    monkeypatch.setattr(addressing, 'SEND_ROUTES', 3)
    addresser = addressing.make_addresser(
        'rabbitmq', conf.oslo_messaging_amqp, 'nova', None,
        {'product': 'RabbitMQ', 'version': '4.0.5'})
    for n in range(10):
        target = om.Target(topic='topic%d' % n)
        assert addresser.send_route('notify', target) == (
            addresser.notify_send(target))
        assert len(addresser._send_routes) <= 3
