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

"""TLS against RabbitMQ's TLS listener, with a CA made by the test.

Throwaway RabbitMQ nodes (rabbitnode.py) listen with TLS on a second
port, with certificates from tlsfiles.py: a verified connection works; an
unknown CA, an expired certificate and a name mismatch (with
``ssl_verify_vhost``) each fail the call at once with a
MessageDeliveryFailure that says which (proton only says "certificate
verify failed"; the driver asks OpenSSL through Python why); a client
certificate with an encrypted key logs in with SASL EXTERNAL.
"""

import oslo_messaging as om
import pytest

from tests.functional import conftest
from tests.functional import tlsfiles
from tests.functional import utils

USER = tlsfiles.CLIENT_NAME
PASSWORD = 'tls-test-password'


def _tls_node(nodes, pki, cert):
    tls_port = conftest.free_port()
    config = '\n'.join([
        'listeners.ssl.default = 127.0.0.1:%d' % tls_port,
        'ssl_options.cacertfile = %s/ca.pem' % pki,
        'ssl_options.certfile = %s/%s.pem' % (pki, cert),
        'ssl_options.keyfile = %s/%s.key' % (pki, cert),
        'ssl_options.verify = verify_peer',
        'ssl_options.fail_if_no_peer_cert = false',
        'ssl_cert_login_from = common_name',
        'auth_mechanisms.1 = PLAIN',
        'auth_mechanisms.2 = AMQPLAIN',
        'auth_mechanisms.3 = EXTERNAL', ''])
    node = nodes.node(user=USER, password=PASSWORD, config=config,
                      plugins=['rabbitmq_auth_mechanism_ssl'])
    node.tls_port = tls_port
    return node


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    return tlsfiles.make_pki(str(tmp_path_factory.mktemp('pki')))


@pytest.fixture(scope='module')
def tls_rabbit(module_rabbit_nodes, pki):
    return _tls_node(module_rabbit_nodes, pki, 'server')


def _round_trip(url, timeout=10, **options):
    """A server and a client on url; the client's call result."""
    topic = utils.unique('tls')
    node = utils.Node(url, **options)
    try:
        node.server(topic, 'srv')
        return utils.wait_ready(node.client(topic), timeout=timeout,
                                value=7)['echo']
    finally:
        node.cleanup()


def _refused(url, **options):
    """A call on url must fail at once; the error's text."""
    node = utils.Node(url, **options)
    try:
        with pytest.raises(om.MessageDeliveryFailure) as info:
            node.client(utils.unique('tls'), timeout=20).call(
                {}, 'echo', value=1)
    finally:
        node.cleanup()
    return str(info.value)


def _url(node, path=''):
    return 'amqp://%s:%s@localhost:%d/%s' % (USER, PASSWORD, node.tls_port,
                                             path)


def test_verified_tls_connection_works(tls_rabbit, pki, report):
    assert _round_trip(_url(tls_rabbit), ssl_ca_file=pki + '/ca.pem') == 7
    report('TLS, test CA, name checked: call', 'works')


def test_unknown_ca_is_refused(tls_rabbit, pki, report):
    error = _refused(_url(tls_rabbit), ssl_ca_file=pki + '/other-ca.pem')
    report('TLS, unknown CA: error', error[error.find('refused'):][:70])
    # OpenSSL's words depend on whether the peer sends its CA too
    assert ('unable to get local issuer certificate' in error or
            'self-signed certificate in certificate chain' in error), error


def test_expired_certificate_is_refused(module_rabbit_nodes, pki, report):
    expired = _tls_node(module_rabbit_nodes, pki, 'expired')
    error = _refused(_url(expired), ssl_ca_file=pki + '/ca.pem')
    report('TLS, expired certificate: error',
           error[error.find('refused'):][:70])
    assert 'certificate has expired' in error, error


def test_name_checked_against_the_vhost(tls_rabbit, pki, report):
    # the certificate names localhost and amqp1.test, not wrong.test
    assert _round_trip(_url(tls_rabbit, tlsfiles.SERVER_NAME),
                       ssl_ca_file=pki + '/ca.pem',
                       ssl_verify_vhost=True) == 7
    error = _refused(_url(tls_rabbit, 'wrong.test'),
                     ssl_ca_file=pki + '/ca.pem', ssl_verify_vhost=True)
    report('TLS, ssl_verify_vhost, vhost not in the certificate: error',
           error[error.find('refused'):][:70])
    assert 'Hostname mismatch' in error and 'wrong.test' in error, error


def test_client_certificate_with_sasl_external(tls_rabbit, pki, report):
    url = 'amqp://localhost:%d/' % tls_rabbit.tls_port
    assert _round_trip(url, ssl_ca_file=pki + '/ca.pem',
                       ssl_cert_file=pki + '/client.pem',
                       ssl_key_file=pki + '/client.key',
                       ssl_key_password=tlsfiles.KEY_PASSWORD,
                       sasl_mechanisms='EXTERNAL') == 7
    report('TLS client certificate (encrypted key), SASL EXTERNAL: call',
           'works')
