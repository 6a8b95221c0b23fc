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

"""Our driver against real qdrouterd and qpidd, through oslo.messaging.

The daemons run with the configuration the DevStack plugin writes (see
conftest.py); AMQP1_TEST_QDROUTERD / AMQP1_TEST_QPIDD name the binaries and
every test skips with a reason when its daemon is not given.
"""

import concurrent.futures
import logging
import os
import shutil
import subprocess
import threading
import time

import oslo_messaging as om
import pytest

from tests.functional import tlsfiles
from tests.functional import utils

CTXT = {'user': 'bob'}
KINDS = ['qdrouterd', 'qpidd']


@pytest.fixture(params=KINDS)
def daemon(request):
    """The module's qdrouterd or qpidd."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def node(daemon):
    """Our driver on the daemon; cleaned up after the test."""
    n = utils.Node(daemon.url())
    yield n
    n.cleanup()


def start_server(node, topic, name, recorder=None):
    server = node.server(topic, name, recorder)
    utils.wait_ready(node.client(topic, server=name), value='ready')
    (recorder or node.recorder).wait('call', 100, 0)
    return server


def fanout_ready(node, topic, recorder):
    client = node.client(topic, fanout=True)
    utils.wait_fanout_ready(
        lambda token: client.cast(CTXT, 'probe', token=token),
        lambda t: recorder.wait('probe', 1, t))


# -- RPC ----------------------------------------------------------------------

def test_call_topic_and_server(node):
    topic = utils.unique('call')
    start_server(node, topic, 'host1')
    value = {'k': [1, 'two', 3.0, None], 'u': '\u2603'}
    assert node.client(topic).call(CTXT, 'echo', value=value) == {
        'echo': value, 'server': 'host1', 'user': 'bob'}
    assert node.client(topic, server='host1').call(
        CTXT, 'echo', value=7) == {'echo': 7, 'server': 'host1',
                                   'user': 'bob'}
    with pytest.raises(ValueError) as info:
        node.client(topic).call(CTXT, 'fail', reason='no luck')
    assert str(info.value).split('\n')[0] == 'no luck'


def test_cast_topic_and_server(node):
    topic = utils.unique('cast')
    start_server(node, topic, 'host1')
    node.client(topic).cast(CTXT, 'record', value='a')
    node.client(topic, server='host1').cast(CTXT, 'record', value='b')
    got = node.recorder.wait('cast', 2)
    assert sorted(e['value'] for e in got) == ['a', 'b']
    assert all(e['user'] == 'bob' for e in got)
    assert node.recorder.wait('cast', 3, 0.5) == []


def test_cast_burst_loses_nothing(node):
    """Casts sent faster than the server takes them all arrive.

    A broker queues them; a router drops pre-settled messages its consumer
    has no credit for, so there a cast waits until it is written.
    """
    topic = utils.unique('burst')
    start_server(node, topic, 'host1')
    client = node.client(topic)
    count, pad = 3000, 'x' * 3000
    for i in range(count):
        client.cast(CTXT, 'record', value=[i, pad])
    got = node.recorder.wait('cast', count, 60)
    assert sorted(e['value'][0] for e in got) == list(range(count))


def test_fanout_reaches_every_server(node):
    topic = utils.unique('fanout')
    recorders = [utils.Recorder(), utils.Recorder()]
    for name, rec in zip(('host1', 'host2'), recorders):
        start_server(node, topic, name, rec)
    for rec in recorders:
        fanout_ready(node, topic, rec)
        rec.wait('probe', 100, 0.3)
    node.client(topic, fanout=True).cast(CTXT, 'fanned', value='all')
    assert recorders[0].wait('fanout', 1) == [
        {'value': 'all', 'server': 'host1'}]
    assert recorders[1].wait('fanout', 1) == [
        {'value': 'all', 'server': 'host2'}]


def test_servers_share_a_topic(node, daemon):
    topic = utils.unique('shared')
    other = utils.Node(daemon.url())
    try:
        start_server(node, topic, 'host1')
        second = start_server(other, topic, 'host2')
        client = node.client(topic, timeout=5)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(
                lambda i: client.call(CTXT, 'slow', seconds=0.2),
                range(16)))
        assert results == [0.2] * 16
        served = node.recorder.wait('slow', 100, 0) + \
            other.recorder.wait('slow', 100, 0)
        # each call served exactly once, by one of the two servers
        assert len(served) == 16
        assert set(served) <= {'host1', 'host2'}
        got = [client.call(CTXT, 'echo', value=i)['server']
               for i in range(6)]
        assert set(got) <= {'host1', 'host2'}
        # one server leaves: the other serves every call
        other.stop(second)
        got = [client.call(CTXT, 'echo', value=i)['server']
               for i in range(4)]
        assert got == ['host1'] * 4
    finally:
        other.cleanup()


def test_call_without_server_times_out(node):
    client = node.client(utils.unique('nobody'), timeout=2)
    start = time.monotonic()
    with pytest.raises(om.MessagingTimeout):
        client.call(CTXT, 'echo', value=1)
    assert 1.9 <= time.monotonic() - start < 4.5


def test_call_waits_for_a_late_server(node):
    # the request is held back (no credit, or released and sent again
    # after link_retry_delay) until a server subscribes
    topic = utils.unique('late')
    client = node.client(topic, timeout=6)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.call, CTXT, 'echo', value='late')
        time.sleep(1.5)
        assert not future.done()
        node.server(topic, 'host1')
        assert future.result(8) == {'echo': 'late', 'server': 'host1',
                                    'user': 'bob'}


# -- notifications ------------------------------------------------------------

def test_notifications(node):
    topic = utils.unique('notify')
    node.listener(topic)
    notifier = node.notifier(topic, publisher_id='compute.host1')
    ctxt = utils.NotifyContext(CTXT)
    notifier.info(ctxt, 'instance.create.end', {'id': 1})
    notifier.error(ctxt, 'instance.create.error', {'id': 2})
    got = node.recorder.wait('notify', 2)
    assert sorted(got, key=lambda e: e['payload']['id']) == [
        {'priority': 'info', 'publisher_id': 'compute.host1',
         'event_type': 'instance.create.end', 'payload': {'id': 1},
         'user': 'bob'},
        {'priority': 'error', 'publisher_id': 'compute.host1',
         'event_type': 'instance.create.error', 'payload': {'id': 2},
         'user': 'bob'}]


def test_notification_listeners_of_a_pool_share(node, daemon):
    topic = utils.unique('pool')
    other = utils.Node(daemon.url())
    try:
        node.listener(topic, pool='p1')
        other.listener(topic, pool='p1')
        notifier = node.notifier(topic)
        for i in range(6):
            notifier.info(utils.NotifyContext(CTXT), 'ev', {'i': i})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = node.recorder.peek('notify') + \
                other.recorder.peek('notify')
            if len(got) >= 6:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        got = node.recorder.peek('notify') + other.recorder.peek('notify')
        # each notification delivered exactly once
        assert sorted(e['payload']['i'] for e in got) == list(range(6))
    finally:
        other.cleanup()


def test_qpidd_stores_notifications_until_a_listener_comes(qpidd):
    node = utils.Node(qpidd.url())
    try:
        topic = utils.unique('stored')
        node.notifier(topic).info(utils.NotifyContext(CTXT), 'early',
                                  {'n': 1})
        node.listener(topic)
        assert [e['payload'] for e in node.recorder.wait('notify', 1)] == [
            {'n': 1}]
    finally:
        node.cleanup()


# -- qdrouterd without consumers ----------------------------------------------

def test_router_cast_without_listener_retry0(qdrouterd):
    """What a cast with retry=0 does when nobody listens on the router.

    (a) The address never had a consumer: the router grants the sender
    link no credit, the cast waits for it until default_send_timeout (5 s
    here) and fails with MessagingTimeout; retry=0 changes nothing as no
    attempt was made, and a server that subscribes later gets nothing.
    (b) The link got credit while a server listened and the server left:
    the cast is pre-settled (pre_settled=rpc-cast), so it returns at once
    without error and the router drops it; nobody ever gets it.
    """
    node = utils.Node(qdrouterd.url())
    try:
        topic = utils.unique('void')
        client = node.client(topic, retry=0)
        start = time.monotonic()
        with pytest.raises(om.MessagingTimeout):
            client.cast(CTXT, 'record', value='never sent')
        assert 4.5 <= time.monotonic() - start < 8
        server = start_server(node, topic, 'host1')
        assert node.recorder.wait('cast', 1, 1) == []

        client.cast(CTXT, 'record', value='warm')
        assert node.recorder.wait('cast', 1) == [
            {'value': 'warm', 'user': 'bob'}]
        node.stop(server)
        start = time.monotonic()
        client.cast(CTXT, 'record', value='dropped')
        assert time.monotonic() - start < 1
        node.server(topic, 'host1')
        utils.wait_ready(node.client(topic), value='again')
        assert node.recorder.wait('cast', 1, 1) == []
    finally:
        node.cleanup()


def test_router_released_call_is_retried(qdrouterd, caplog):
    # Once the sender link has credit, a call to an address whose last
    # consumer left is 'released' by the router; the driver sends it again
    # every link_retry_delay (1 s here) until its timeout ...
    caplog.set_level(logging.DEBUG, logger='oslo_messaging_amqp1')
    node = utils.Node(qdrouterd.url())
    try:
        topic = utils.unique('released')
        server = start_server(node, topic, 'host1')
        client = node.client(topic, timeout=2)
        # the sender link to the topic gets its credit while a server is
        # there
        assert client.call(CTXT, 'echo', value='here')['echo'] == 'here'
        node.stop(server)
        start = time.monotonic()
        with pytest.raises(om.MessagingTimeout):
            client.call(CTXT, 'echo', value='gone')
        assert 1.9 <= time.monotonic() - start < 4.5
        assert 'released, resending' in caplog.text
        # ... and delivers it once a server is back
        caplog.clear()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(client.prepare(timeout=6).call, CTXT,
                                 'echo', value='back')
            time.sleep(1.5)
            assert not future.done()
            node.server(topic, 'host1')
            assert future.result(8)['echo'] == 'back'
        assert 'released, resending' in caplog.text
    finally:
        node.cleanup()


# -- daemon restart -----------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
def test_reconnect_after_daemon_restart(daemons, kind):
    daemon = daemons.start(kind)
    node = utils.Node(daemon.url())
    try:
        topic = utils.unique('restart')
        start_server(node, topic, 'host1')
        client = node.client(topic, timeout=3)
        assert client.call(CTXT, 'echo', value=1)['echo'] == 1
        daemon.kill()
        with pytest.raises((om.MessagingTimeout, om.MessageDeliveryFailure)):
            client.call(CTXT, 'echo', value=2)
        daemon.start()
        # the server resubscribes on its own; calls work again
        assert utils.wait_ready(client, value=3, timeout=15) == {
            'echo': 3, 'server': 'host1', 'user': None}
        assert client.call(CTXT, 'echo', value=4)['echo'] == 4
        client.cast(CTXT, 'record', value=5)
        assert node.recorder.wait('cast', 1) == [
            {'value': 5, 'user': 'bob'}]
    finally:
        node.cleanup()


# -- SASL ---------------------------------------------------------------------

def _qdrouterd_sasl_or_skip(daemons):
    path = daemons.binary('qdrouterd')
    if shutil.which('saslpasswd2') is None:
        pytest.skip('saslpasswd2 is not installed: cannot make a sasldb')
    libs = subprocess.run(['ldd', path], capture_output=True,
                          text=True).stdout
    if 'libsasl2' not in libs:
        pytest.skip('%s is built without Cyrus SASL: no sasldb users' %
                    path)


def test_qdrouterd_sasl_plain(daemons):
    _qdrouterd_sasl_or_skip(daemons)
    router = daemons.qdrouterd(users={'stackrabbit': 's3cret'})
    node = utils.Node(router.url('stackrabbit', 's3cret'))
    try:
        topic = utils.unique('sasl')
        start_server(node, topic, 'host1')
        assert node.client(topic).call(CTXT, 'echo', value='auth') == {
            'echo': 'auth', 'server': 'host1', 'user': 'bob'}
    finally:
        node.cleanup()
    bad = utils.Node(router.url('stackrabbit', 'wrong'))
    try:
        start = time.monotonic()
        with pytest.raises(om.MessageDeliveryFailure) as info:
            bad.client(utils.unique('sasl'), timeout=4).call(
                CTXT, 'echo', value=0)
        assert 'authentication failed' in str(info.value)
        assert time.monotonic() - start < 4
    finally:
        bad.cleanup()


def test_qdrouterd_tls_as_the_plugin_configures_it(daemons, tmp_path):
    """AMQP1_SSL=True: the router requires TLS; the driver verifies it."""
    pki = tlsfiles.make_pki(str(tmp_path / 'pki'))
    router = daemons.qdrouterd(tls=pki)
    ca_file = os.path.join(pki, 'ca.pem')
    node = utils.Node(router.url(), ssl=True, ssl_ca_file=ca_file)
    try:
        topic = utils.unique('tls')
        start_server(node, topic, 'host1')
        assert node.client(topic).call(CTXT, 'echo', value='tls') == {
            'echo': 'tls', 'server': 'host1', 'user': 'bob'}
    finally:
        node.cleanup()
    # a client without TLS gets nowhere: the listener requires it
    plain = utils.Node(router.url())
    try:
        with pytest.raises(om.MessagingException):
            plain.client(utils.unique('tls'), timeout=4).call(
                CTXT, 'echo', value=0)
    finally:
        plain.cleanup()


def test_concurrent_threads_share_one_connection(node):
    topic = utils.unique('threads')
    start_server(node, topic, 'host1')
    errors = []

    def caller(i):
        try:
            got = node.client(topic).call(CTXT, 'echo', value=i)
            assert got['echo'] == i
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
