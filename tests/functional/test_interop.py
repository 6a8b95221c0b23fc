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

"""Wire compatibility with oslo.messaging's former AMQP 1.0 driver.

A subprocess (``interop_peer.py``) runs the old driver (oslo.messaging
14.9.x, from the virtualenv named by ``AMQP1_TEST_OLD_VENV``) as RPC server,
notification listener and client; this process runs ours.  Calls (with a
remote exception and call-monitor heartbeats), casts, fanouts and
notifications go both ways through each intermediary:

* ``router-peer`` / ``broker-peer``: the in-process peers of tests/peers.py
  (routable and legacy addressing);
* ``qdrouterd`` / ``qpidd``: the real daemons (AMQP1_TEST_QDROUTERD,
  AMQP1_TEST_QPIDD), configured as the DevStack plugin configures them.

Everything skips with a reason when AMQP1_TEST_OLD_VENV is unset.
"""

import json
import os
import queue
import subprocess
import threading
import uuid

import oslo_messaging as om
import pytest

from tests.functional import utils
from tests import peers

HERE = os.path.dirname(os.path.abspath(__file__))
PEER_SCRIPT = os.path.join(HERE, 'interop_peer.py')
OLD_DRIVER = 'oslo_messaging._drivers.impl_amqp1.ProtonDriver'
EXCHANGE = 'interop'
OLD_SERVER = 'old-server'
NEW_SERVER = 'new-server'
# the old driver's options, as small as it allows
OLD_OPTS = ('link_retry_delay=1', 'connection_retry_interval=1',
            'connection_retry_backoff=0', 'connection_retry_interval_max=1',
            'default_send_timeout=5', 'default_notify_timeout=5',
            'default_reply_timeout=5')
CTXT = {'user': 'alice', 'project_id': 'p1'}


def old_python() -> str:
    """The old virtualenv's python, from AMQP1_TEST_OLD_VENV, or skip."""
    value = os.environ.get('AMQP1_TEST_OLD_VENV')
    if not value:
        pytest.skip('AMQP1_TEST_OLD_VENV is not set: no oslo.messaging '
                    '14.9.x virtualenv (the old AMQP 1.0 driver) to test '
                    'against')
    path = os.path.join(value, 'bin', 'python') if os.path.isdir(value) \
        else value
    if not os.access(path, os.X_OK):
        pytest.skip('AMQP1_TEST_OLD_VENV=%s: no python at %s' % (value, path))
    return path


class OldPeer(object):
    """interop_peer.py in the old virtualenv, driven over stdin/stdout."""

    def __init__(self, python, url, workdir, tag):
        self.server_topic = 'old-rpc-%s' % tag
        self.notify_topic = 'old-notify-%s' % tag
        self.log = os.path.join(workdir, 'old-driver.log')
        cmd = [python, PEER_SCRIPT, '--url', url, '--exchange', EXCHANGE,
               '--server-topic', self.server_topic,
               '--server-name', OLD_SERVER,
               '--notify-topic', self.notify_topic, '--log', self.log]
        for opt in OLD_OPTS:
            cmd += ['--opt', opt]
        self.stderr = open(os.path.join(workdir, 'old-driver.err'), 'w')
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True,
                                     bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self._answer(60)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _answer(self, timeout):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            raise AssertionError('old driver peer: no answer within %ss; '
                                 'log:\n%s' % (timeout, self.tail()))
        return json.loads(line)

    def tail(self, lines=40) -> str:
        out = []
        for path in (self.stderr.name, self.log):
            if os.path.exists(path):
                with open(path, errors='replace') as f:
                    out.append(''.join(f.readlines()[-lines:]))
        return '\n'.join(out)

    def request(self, op, timeout=15, **kwargs):
        kwargs['op'] = op
        self.proc.stdin.write(json.dumps(kwargs) + '\n')
        self.proc.stdin.flush()
        answer = self._answer(timeout)
        if not answer['ok']:
            raise AssertionError('old driver peer: %s failed: %s' %
                                 (op, answer['error']))
        return answer['result']

    def call(self, topic, method, server=None, timeout=5,
             call_monitor_timeout=None, **args):
        """Call through the old driver: {'value': R} or {'exception': E}."""
        return self.request('call', timeout=timeout + 10, topic=topic,
                            server=server, method=method, ctxt=CTXT,
                            args=args, call_timeout=timeout,
                            call_monitor_timeout=call_monitor_timeout)

    def cast(self, topic, method, server=None, fanout=False, **args):
        return self.request('cast', topic=topic, server=server,
                            fanout=fanout, method=method, ctxt=CTXT,
                            args=args)

    def notify(self, topic, priority, event_type, payload, publisher_id):
        return self.request('notify', topic=topic, priority=priority,
                            event_type=event_type, payload=payload,
                            publisher_id=publisher_id, ctxt=CTXT)

    def wait(self, kind, count=1, timeout=5):
        """Take what the old endpoints got of kind (up to count, timeout)."""
        return self.request('wait', timeout=timeout + 10, kind=kind,
                            count=count, wait_timeout=timeout)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self.stderr.close()


class Pair(object):
    """Our driver (node) and the old one (old) on one intermediary."""

    def __init__(self, url, python, workdir):
        tag = uuid.uuid4().hex[:8]
        self.new_topic = 'new-rpc-%s' % tag
        self.new_notify = 'new-notify-%s' % tag
        self.node = utils.Node(url, exchange=EXCHANGE)
        self.old = None
        try:
            self.node.server(self.new_topic, NEW_SERVER)
            self.node.listener(self.new_notify)
            self.old = OldPeer(python, url, workdir, tag)
            assert self.old.hello['driver'] == OLD_DRIVER, self.old.hello
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self):
        # both servers answer calls, and both fanout links are attached
        utils.wait_ready(self.node.client(self.old.server_topic),
                         value='ready')
        for _ in range(20):
            got = self.old.call(self.new_topic, 'echo', timeout=2,
                                value='ready')
            if 'value' in got:
                break
        else:
            raise AssertionError('our server never answered the old '
                                 'driver: %s' % got)
        self.node.recorder.wait('call', 100, 0)
        old_fanout = self.node.client(self.old.server_topic, fanout=True)
        utils.wait_fanout_ready(
            lambda token: old_fanout.cast(CTXT, 'probe', token=token),
            lambda t: self.old.wait('probe', 1, t))
        utils.wait_fanout_ready(
            lambda token: self.old.cast(self.new_topic, 'probe',
                                        fanout=True, token=token),
            lambda t: self.node.recorder.wait('probe', 1, t))
        # late probes must not be taken for test data
        self.old.wait('probe', 100, 0.3)
        self.node.recorder.wait('probe', 100, 0.3)

    def close(self):
        if self.old is not None:
            self.old.close()
        self.node.cleanup()


INTERMEDIARIES = ['router-peer', 'broker-peer', 'qdrouterd', 'qpidd']
# the addressing both drivers pick from the peer's Open product (dynamic)
ADDRESSING = {'router-peer': 'routable', 'qdrouterd': 'routable',
              'broker-peer': 'legacy', 'qpidd': 'legacy'}


@pytest.fixture(scope='module', params=INTERMEDIARIES)
def pair(request, tmp_path_factory):
    """Our driver and the old one through one intermediary."""
    python = old_python()
    kind = request.param
    peer = None
    if kind.endswith('-peer'):
        peer = peers.Peer(kind[:-len('-peer')]).start()
        url = peer.url
    else:
        url = request.getfixturevalue(kind).url()
    try:
        the_pair = Pair(url, python, str(tmp_path_factory.mktemp('interop')))
        assert the_pair.node.driver._ctl.addresser.mode == ADDRESSING[kind]
        yield the_pair
        the_pair.close()
    finally:
        if peer is not None:
            peer.stop()


@pytest.fixture
def clean(pair):
    """The pair, with nothing left over from earlier tests."""
    pair.old.wait('cast', 100, 0)
    pair.old.wait('fanout', 100, 0)
    pair.old.wait('notify', 100, 0)
    for kind in ('call', 'cast', 'fanout', 'notify', 'probe'):
        pair.node.recorder.wait(kind, 100, 0)
    return pair


# -- RPC calls ---------------------------------------------------------------

def test_call_new_to_old(clean):
    value = {'n': 1, 'text': 'h\u00e9llo', 'list': [1, 2.5, None, True]}
    client = clean.node.client(clean.old.server_topic)
    assert client.call(CTXT, 'echo', value=value) == {
        'echo': value, 'server': OLD_SERVER, 'user': 'alice'}
    direct = clean.node.client(clean.old.server_topic, server=OLD_SERVER)
    assert direct.call(CTXT, 'echo', value='direct') == {
        'echo': 'direct', 'server': OLD_SERVER, 'user': 'alice'}


def test_call_old_to_new(clean):
    value = {'n': 2, 'text': 'w\u00f6rld', 'nested': {'a': [1]}}
    assert clean.old.call(clean.new_topic, 'echo', value=value) == {
        'value': {'echo': value, 'server': NEW_SERVER, 'user': 'alice'}}
    assert clean.old.call(clean.new_topic, 'echo', server=NEW_SERVER,
                          value='direct') == {
        'value': {'echo': 'direct', 'server': NEW_SERVER, 'user': 'alice'}}


def test_remote_exception_new_to_old(clean):
    client = clean.node.client(clean.old.server_topic)
    with pytest.raises(ValueError) as info:
        client.call(CTXT, 'fail', reason='broken on purpose')
    # a builtin exception comes back as itself, with the server's
    # traceback after the message
    assert type(info.value) is ValueError
    text = str(info.value)
    assert text.split('\n')[0] == 'broken on purpose'
    assert 'in fail' in text and 'raise ValueError(reason)' in text


def test_remote_exception_old_to_new(clean):
    got = clean.old.call(clean.new_topic, 'fail', reason='ours broke')
    exc = got['exception']
    assert exc['class'] == 'ValueError' and exc['module'] == 'builtins'
    assert exc['text'].split('\n')[0] == 'ours broke'
    assert 'in fail' in exc['text']


def test_call_monitor_new_to_old(clean):
    # the old server's heartbeats (every monitor/2 s, 2 s at least for the
    # dispatcher) keep our call alive past its call monitor timeout
    client = clean.node.client(clean.old.server_topic, timeout=8)
    client = client.prepare(call_monitor_timeout=2)
    assert client.call(CTXT, 'slow', seconds=3.5) == 3.5


def test_call_monitor_old_to_new(clean):
    assert clean.old.call(clean.new_topic, 'slow', timeout=8,
                          call_monitor_timeout=2, seconds=3.5) == {
        'value': 3.5}


# -- casts and fanout ------------------------------------------------------

def test_cast_new_to_old(clean):
    clean.node.client(clean.old.server_topic).cast(CTXT, 'record', value=1)
    clean.node.client(clean.old.server_topic, server=OLD_SERVER).cast(
        CTXT, 'record', value=2)
    got = clean.old.wait('cast', 2)
    assert sorted(got, key=lambda e: e['value']) == [
        {'value': 1, 'user': 'alice'}, {'value': 2, 'user': 'alice'}]


def test_cast_old_to_new(clean):
    clean.old.cast(clean.new_topic, 'record', value=3)
    clean.old.cast(clean.new_topic, 'record', server=NEW_SERVER, value=4)
    got = clean.node.recorder.wait('cast', 2)
    assert sorted(got, key=lambda e: e['value']) == [
        {'value': 3, 'user': 'alice'}, {'value': 4, 'user': 'alice'}]


def test_fanout_new_to_old(clean):
    clean.node.client(clean.old.server_topic, fanout=True).cast(
        CTXT, 'fanned', value='to all old')
    assert clean.old.wait('fanout', 1) == [
        {'value': 'to all old', 'server': OLD_SERVER}]


def test_fanout_old_to_new(clean):
    clean.old.cast(clean.new_topic, 'fanned', fanout=True,
                   value='to all new')
    assert clean.node.recorder.wait('fanout', 1) == [
        {'value': 'to all new', 'server': NEW_SERVER}]


# -- notifications ---------------------------------------------------------

def test_notification_new_to_old(clean):
    payload = {'instance': 'i-1', 'state': 'active', 'size': 3}
    notifier = clean.node.notifier(clean.old.notify_topic,
                                   publisher_id='new.host1')
    ctxt = utils.NotifyContext(CTXT)
    notifier.info(ctxt, 'compute.instance.create.end', payload)
    notifier.warn(ctxt, 'compute.instance.slow', {'late': True})
    got = clean.old.wait('notify', 2)
    assert sorted(got, key=lambda e: e['priority']) == [
        {'priority': 'info', 'publisher_id': 'new.host1',
         'event_type': 'compute.instance.create.end', 'payload': payload,
         'user': 'alice'},
        {'priority': 'warn', 'publisher_id': 'new.host1',
         'event_type': 'compute.instance.slow', 'payload': {'late': True},
         'user': 'alice'}]


def test_notification_old_to_new(clean):
    payload = {'volume': 'v-1', 'size': 10}
    clean.old.notify(clean.new_notify, 'error', 'volume.create.error',
                     payload, publisher_id='old.host2')
    assert clean.node.recorder.wait('notify', 1) == [
        {'priority': 'error', 'publisher_id': 'old.host2',
         'event_type': 'volume.create.error', 'payload': payload,
         'user': 'alice'}]


def test_our_messages_expire_like_the_old_drivers(clean):
    # a call to a topic nobody serves times out on both sides alike
    with pytest.raises(om.MessagingTimeout):
        clean.node.client('nobody-%s' % uuid.uuid4().hex[:6],
                          timeout=2).call(CTXT, 'echo', value=0)
    got = clean.old.call('nobody-%s' % uuid.uuid4().hex[:6], 'echo',
                         timeout=2, value=0)
    assert got['exception']['class'] == 'MessagingTimeout'
