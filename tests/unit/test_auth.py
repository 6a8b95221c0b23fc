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

"""SASL PLAIN against a peer that checks passwords."""

import logging
import time

import oslo_messaging as om
import pytest

from tests.unit import helpers

PASSWORD = 'S3cr3t-pa55'
WRONG = 'Wr0ng-pa55'
TOPIC = 'openstack.org/om/rpc/anycast/nova/compute'


@pytest.fixture
def secured(make_peer):
    return make_peer('router', users={'stackrabbit': PASSWORD})


def url(peer, user, password):
    return 'amqp://%s:%s@127.0.0.1:%d/' % (user, password, peer.port)


def test_right_password(messaging, secured):
    transport = messaging.transport(url(secured, 'stackrabbit', PASSWORD))
    messaging.server(transport)
    helpers.wait_receivers(secured, TOPIC)
    assert messaging.client(transport).call({}, 'echo', value=1) == 1
    assert [c['user'] for c in secured.connections()] == ['stackrabbit']


def _all_log_text(caplog):
    return '\n'.join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('user,password', [('stackrabbit', WRONG),
                                           ('intruder', PASSWORD)])
def test_wrong_credentials_fail_fast(messaging, secured, caplog, user,
                                     password):
    caplog.set_level(logging.DEBUG)
    transport = messaging.transport(url(secured, user, password))
    client = messaging.client(transport, timeout=5)
    started = time.monotonic()
    with pytest.raises(om.MessageDeliveryFailure) as info:
        client.call({}, 'echo', value=1)
    assert time.monotonic() - started < 2.5     # not the 5 s timeout
    text = str(info.value)
    assert 'authentication' in text
    assert '127.0.0.1:%d' % secured.port in text
    assert password not in text
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR]
    assert errors
    assert any('authentication' in e and
               '127.0.0.1:%d' % secured.port in e for e in errors)
    assert password not in _all_log_text(caplog)
    assert secured.connections() == []


def test_wrong_password_cast_and_notification_fail_fast(messaging, secured,
                                                        caplog):
    transport = messaging.transport(url(secured, 'stackrabbit', WRONG))
    client = messaging.client(transport)
    started = time.monotonic()
    with pytest.raises(om.MessageDeliveryFailure):
        client.cast({}, 'echo', value=1)
    ntransport = messaging.notification_transport(
        url(secured, 'stackrabbit', WRONG))
    with pytest.raises(om.MessageDeliveryFailure):
        ntransport._send_notification(
            om.Target(topic='notifications.info'), {}, {}, 2.0)
    assert time.monotonic() - started < 4
    assert WRONG not in _all_log_text(caplog)


def test_anonymous_refused_by_secured_peer(messaging, secured):
    transport = messaging.transport(secured)
    client = messaging.client(transport, timeout=5)
    started = time.monotonic()
    # no mechanism in common: the client gives up, the peer keeps the
    # socket open; the caller must not wait for its timeout
    with pytest.raises(om.MessageDeliveryFailure) as info:
        client.call({}, 'echo', value=1)
    assert time.monotonic() - started < 1
    assert "user 'anonymous'" in str(info.value)


def test_password_fixed_by_new_transport(messaging, secured):
    bad = messaging.transport(url(secured, 'stackrabbit', WRONG))
    with pytest.raises(om.MessageDeliveryFailure):
        messaging.client(bad).call({}, 'echo', value=1)
    good = messaging.transport(url(secured, 'stackrabbit', PASSWORD))
    messaging.server(good)
    helpers.wait_receivers(secured, TOPIC)
    assert messaging.client(good).call({}, 'echo', value=2) == 2
