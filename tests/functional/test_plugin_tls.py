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

"""The plugin's TLS to the bus (AMQP1_SSL=True) on a real RabbitMQ.

The plugin's own functions (through tools/devstack-compat.sh) copy the
certificate, key and CA, write RabbitMQ's TLS listener settings and the
services' configuration; a throwaway RabbitMQ node runs with those
settings. Then the plugin's readiness probe (amqp1_check_peer) and its
bus check (amqp1_bus_check: a call, a cast, a fanout and a notification
through the driver with ssl=True and ssl_ca_file) must pass over TLS, and
fail when the services are given a CA that did not sign the bus.
"""

import os
import subprocess

import pytest

from tests.functional import conftest
from tests.functional import tlsfiles

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PASSWORD = 'plugin-tls-secret'


def plugin(tmp_path, tls_port, script, ca='ca.pem'):
    """Run script (bash) with the plugin loaded in rabbit mode, TLS on."""
    pki = str(tmp_path / 'pki')
    env = dict(os.environ,
               AMQP1_STANDALONE_DIR=str(tmp_path / 'standalone'),
               AMQP1_SERVICE='rabbit', AMQP1_SSL='True',
               AMQP1_SSL_PORT=str(tls_port), AMQP1_HOST='localhost',
               AMQP1_SSL_CERT_FILE=os.path.join(pki, 'server.pem'),
               AMQP1_SSL_KEY_FILE=os.path.join(pki, 'server.key'),
               AMQP1_SSL_CA_FILE=os.path.join(pki, ca),
               AMQP1_RABBITMQ_CONF_DIR=str(tmp_path / 'rabbitmq'),
               AMQP1_RABBITMQ_USER=str(os.getuid()),
               RABBIT_USERID='stackrabbit', RABBIT_PASSWORD=PASSWORD,
               AMQP1_BUS_CHECK_TIMEOUT='60')
    prologue = ('source tools/devstack-compat.sh && '
                'source devstack/settings && source devstack/plugin.sh && ')
    return subprocess.run(['bash', '-c', prologue + script], cwd=REPO_DIR,
                          env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def tls_bus(tmp_path, rabbit_nodes):
    """A RabbitMQ node with the TLS listener the plugin configured."""
    tlsfiles.make_pki(str(tmp_path / 'pki'))
    tls_port = conftest.free_port()
    out = plugin(tmp_path, tls_port,
                 'configure_amqp1_tls && '
                 'amqp1_rabbitmq_tls_settings "$(amqp1_tls_dir)"')
    assert out.returncode == 0, out.stderr
    assert 'listeners.ssl.default = %d' % tls_port in out.stdout
    node = rabbit_nodes.node(user='stackrabbit', password=PASSWORD,
                             config=out.stdout)
    return tls_port, node


def test_peer_probe_and_bus_check_pass_over_tls(tmp_path, tls_bus):
    tls_port, node = tls_bus
    out = plugin(tmp_path, tls_port,
                 'amqp1_check_peer rabbitmq && amqp1_bus_check')
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith('RabbitMQ ')
    assert 'bus-check: all checks passed' in out.stderr
    conf = (tmp_path / 'standalone' / 'data' / 'amqp1' /
            'bus-check.conf').read_text()
    # what every service gets: the TLS port, ssl and the plugin's CA copy
    assert 'transport_url = amqp://stackrabbit:%s@localhost:%d/' % (
        PASSWORD, tls_port) in conf
    assert 'ssl = True' in conf
    assert 'ssl_ca_file = %s' % (
        tmp_path / 'standalone' / 'etc' / 'tls' / 'ca.pem') in conf
    # the plain port of the node is not what the services use
    assert ':%d/' % node.port not in conf


def test_a_ca_that_did_not_sign_the_bus_fails_both_checks(tmp_path,
                                                          tls_bus):
    tls_port, node = tls_bus
    out = plugin(tmp_path, tls_port,
                 'configure_amqp1_tls && amqp1_check_peer rabbitmq',
                 ca='other-ca.pem')
    assert out.returncode != 0
    assert 'does not answer as RabbitMQ' in out.stderr
    assert 'certificate verify failed' in out.stderr.lower() or \
        'no AMQP 1.0 connection' in out.stderr
    out = plugin(tmp_path, tls_port, 'amqp1_bus_check --timeout 10',
                 ca='other-ca.pem')
    assert out.returncode != 0
    assert 'the bus check failed' in out.stderr
