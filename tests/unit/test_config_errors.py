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

"""Configuration mistakes fail when the transport is created, clearly."""

import threading

from oslo_config import cfg
import oslo_messaging as om
import pytest

from oslo_messaging_amqp1 import driver as amqp_driver
from oslo_messaging_amqp1 import opts as amqp_opts
from tests.unit import helpers


def io_threads():
    return [t for t in threading.enumerate() if t.name == 'amqp1-io']


def load_config(conf, tmp_path, text):
    path = tmp_path / 'amqp1.conf'
    path.write_text(text)
    conf(['--config-file', str(path)], project='amqp1-unit-tests')


def test_unknown_addressing_mode_in_config_file(conf, tmp_path):
    load_config(conf, tmp_path,
                '[oslo_messaging_amqp]\naddressing_mode = brokered\n')
    before = len(io_threads())
    with pytest.raises(cfg.ConfigFileValueError) as info:
        om.get_rpc_transport(conf, 'amqp://127.0.0.1:5672/')
    assert 'addressing_mode' in str(info.value)
    assert 'brokered' in str(info.value)
    assert len(io_threads()) == before


def test_unknown_addressing_mode_override(conf):
    with pytest.raises(ValueError):
        conf.set_override('addressing_mode', 'brokered',
                          group=amqp_opts.GROUP)


@pytest.mark.parametrize('text,option', [
    ('rpc_server_credit = 0', 'rpc_server_credit'),
    ('reply_link_credit = many', 'reply_link_credit'),
    ('pseudo_vhost = perhaps', 'pseudo_vhost'),
])
def test_invalid_values_in_config_file(conf, tmp_path, text, option):
    load_config(conf, tmp_path, '[oslo_messaging_amqp]\n%s\n' % text)
    with pytest.raises(cfg.ConfigFileValueError) as info:
        om.get_rpc_transport(conf, 'amqp://127.0.0.1:5672/')
    assert option in str(info.value)


def test_deprecated_amqp1_group_still_read(conf, tmp_path):
    load_config(conf, tmp_path,
                '[amqp1]\nserver_request_prefix = srv\n')
    transport = om.get_rpc_transport(conf, 'amqp://127.0.0.1:5672/')
    try:
        assert conf.oslo_messaging_amqp.server_request_prefix == 'srv'
    finally:
        transport.cleanup()


@pytest.mark.parametrize('entries', [['rpc-cast', 'bogus'], ['rpc_cast']])
def test_bad_pre_settled_entry(conf, entries):
    conf.set_override('pre_settled', entries, group=amqp_opts.GROUP)
    with pytest.raises(ValueError) as info:
        om.get_rpc_transport(conf, 'amqp://127.0.0.1:5672/')
    message = str(info.value)
    assert 'pre_settled' in message
    assert 'rpc-call, rpc-reply, rpc-cast, notify' in message


@pytest.mark.parametrize('url', ['amqp://127.0.0.1:70000/',
                                 'amqp://127.0.0.1:0/',
                                 'amqp://h1:5672,127.0.0.1:99999/'])
def test_port_out_of_range(conf, url):
    with pytest.raises(om.InvalidTransportURL) as info:
        om.get_rpc_transport(conf, url)
    assert 'out of range' in str(info.value)


def test_password_without_user(conf):
    with pytest.raises(om.InvalidTransportURL) as info:
        om.get_rpc_transport(conf, 'amqp://:T0pS3cret@127.0.0.1:5672/')
    assert 'without a user name' in str(info.value)
    assert 'T0pS3cret' not in str(info.value)


def test_valid_url_makes_no_connection_until_used(conf):
    before = len(io_threads())
    transport = om.get_rpc_transport(conf, 'amqp://u:p@127.0.0.1:5672/')
    try:
        assert len(io_threads()) == before
    finally:
        transport.cleanup()


def test_list_opts_matches_registered_options():
    (group, options), = amqp_opts.list_opts()
    assert group.name == 'oslo_messaging_amqp'
    names = set(o.name for o in options)
    assert {'addressing_mode', 'pre_settled', 'rpc_server_credit',
            'link_retry_delay', 'pseudo_vhost'} <= names
    assert amqp_driver.ProtonDriver is not None


@pytest.mark.parametrize('kind,product', [('router', 'qpid-dispatch-router'),
                                          ('broker', 'qpid-cpp')])
def test_quorum_queues_refused_off_rabbitmq(conf, make_peer, kind, product):
    peer = make_peer(kind)
    amqp_opts.register(conf)
    conf.set_override('rabbit_quorum_queue', True, group=amqp_opts.GROUP)
    transport = om.get_rpc_transport(conf, helpers.url_of(peer))
    try:
        client = om.get_rpc_client(transport, om.Target(topic='t'),
                                   timeout=20)
        with pytest.raises(om.MessageDeliveryFailure) as info:
            client.cast({}, 'anything')
    finally:
        transport.cleanup()
    assert 'unset rabbit_quorum_queue' in str(info.value)
    assert product in str(info.value)
    # nothing was attached on the peer that cannot hold quorum queues
    assert not [link for link in peer.links() if link[0] == 'receiver']


def test_options_of_the_in_tree_driver_name_the_fix():
    """oslo.messaging < 15 registers its own driver's options first."""
    conf = cfg.ConfigOpts()
    # the old driver's container_name, as oslo.messaging 14.x defined it
    conf.register_opts([cfg.StrOpt('container_name', default='old',
                                   help='the in-tree definition')],
                       group='oslo_messaging_amqp')
    with pytest.raises(om.DriverLoadFailure) as info:
        om.get_rpc_transport(conf, 'amqp://u:p@127.0.0.1:5672/')
    message = str(info.value)
    assert 'oslo.messaging older than 15' in message
    assert 'Upgrade oslo.messaging to 15 or later' in message
