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

"""Malformed AMQP messages from raw proton: nothing crashes, nothing lost.

Malformed messages go, with a plain ``proton.utils.BlockingConnection``, to
an RPC server's address, to a notification listener's address and to the
reply address of a client with a call in flight.  Each one is rejected or
dropped with exactly one log line (WARNING or above), the process keeps
serving, and the legitimate call or notification sent after each batch
comes through with the right result.

Runs against the in-process router and broker peers (tests/peers.py) always
and against RabbitMQ when AMQP1_TEST_RABBIT_URL is set.  The reply address
is read from the running transport's controller
(``transport._driver._ctl.replies.address``): test-only introspection.
"""

import json
import logging
import os
import threading
import time
import uuid

from oslo_config import cfg
import oslo_messaging as om
from oslo_messaging import conffixture
import proton
from proton import utils as proton_utils
import pytest

from oslo_messaging_amqp1 import opts
from tests.functional import utils
from tests import peers

LOG = logging.getLogger(__name__)
RABBIT_URL = os.environ.get('AMQP1_TEST_RABBIT_URL')
WAIT = 10.0

GOOD_CALL = {'method': 'echo', 'args': {'value': 'x'}}


def _body(data):
    return json.dumps(data)


def _msg(body=None, **props):
    message = proton.Message(body=body)
    for key, value in props.items():
        setattr(message, key, value)
    return message


def _request(request, **extra):
    data = {'request': request, 'context': {}}
    data.update(extra)
    return _body(data)


# (name, message factory, needs a body-carrying intermediary?)
def malformed_requests():
    """Messages that are not valid requests or notifications."""
    big = 'x' * (4 * 1024 * 1024)
    return [
        ('not-json', _msg('this is not JSON')),
        ('json-list', _msg('[1, 2, 3]')),
        ('json-number', _msg('42')),
        ('json-string', _msg('"request"')),
        ('json-null', _msg('null')),
        ('json-truncated', _msg('{"request": {"method": "echo"')),
        ('deeply-nested', _msg('[' * 50000)),
        ('missing-request', _msg(_body({'context': {}}))),
        ('request-not-object', _msg(_request([1, 2]))),
        ('request-string', _msg(_request('echo'))),
        ('context-not-object', _msg(_body({'request': GOOD_CALL,
                                           'context': [1, 2]}))),
        ('context-string', _msg(_body({'request': GOOD_CALL,
                                       'context': 'admin'}))),
        ('monitor-string', _msg(_request(GOOD_CALL,
                                         call_monitor_timeout='soon'))),
        ('monitor-bool', _msg(_request(GOOD_CALL,
                                       call_monitor_timeout=True))),
        ('binary-body', _msg(_request(GOOD_CALL).encode())),
        ('invalid-utf8-binary', _msg(b'\xff\xfe{"request": \xc3\x28}')),
        ('amqp-list-body', _msg(['request', 'context'])),
        ('amqp-map-body', _msg({'request': GOOD_CALL, 'context': {}})),
        ('amqp-int-body', _msg(7)),
        ('empty-body', _msg(None)),
        ('empty-string', _msg('')),
        ('huge-body', _msg(big)),
        ('huge-valid-json-not-request', _msg(_body({'junk': big}))),
        ('envelope-message-not-string', _msg(_request(
            {'oslo.version': '2.0', 'oslo.message': 5}))),
        ('envelope-message-not-json', _msg(_request(
            {'oslo.version': '2.0', 'oslo.message': '{nope'}))),
        ('envelope-message-list', _msg(_request(
            {'oslo.version': '2.0', 'oslo.message': '[1]'}))),
        ('not-json-with-properties', _msg(
            'garbage', subject='echo', properties={'method': 'echo'},
            content_type='application/json')),
    ]


def malformed_replies(ids):
    """Replies nobody waits for: bogus, missing or foreign correlation."""
    unknown = uuid.uuid4().hex
    return [
        ('unknown-call', _msg(_body({'response': 1}), correlation_id=unknown)),
        ('missing-correlation', _msg(_body({'response': 1}))),
        ('uuid-correlation', _msg(_body({'response': 1}),
                                  correlation_id=uuid.uuid4())),
        ('int-correlation', _msg(_body({'response': 1}),
                                 correlation_id=12345)),
        ('binary-correlation', _msg(_body({'response': 1}),
                                    correlation_id=ids.encode())),
        ('heartbeat-unknown-call', _msg(None, correlation_id=unknown)),
        ('neither-response-nor-failure', _msg(
            _body({'result': 1}), correlation_id=unknown)),
        ('failure-not-string', _msg(_body({'failure': {'class': 'X'}}),
                                    correlation_id=unknown)),
        ('failure-garbage', _msg(_body({'failure': '[1]'}),
                                 correlation_id=unknown)),
        ('not-json', _msg('not json', correlation_id=unknown)),
        ('json-list', _msg('[]', correlation_id=unknown)),
        ('binary-body', _msg(b'\x00\x01', correlation_id=unknown)),
        ('amqp-map-body', _msg({'response': 1}, correlation_id=unknown)),
        ('huge-body', _msg('x' * (4 * 1024 * 1024),
                           correlation_id=unknown)),
        ('properties-and-subject', _msg(
            _body({'response': 1}), correlation_id=unknown, subject='x',
            properties={'correlation_id': ids}, reply_to='nowhere')),
        ('empty-body-missing-correlation', _msg(None)),
    ]


class Endpoint:
    """RPC endpoint; block() holds a call in flight until released."""

    def __init__(self):
        self.seen = []
        self.release = threading.Event()
        self.started = threading.Event()

    def echo(self, ctxt, value):
        self.seen.append(value)
        return {'value': value, 'ctxt': ctxt}

    def note(self, ctxt, value):
        self.seen.append(value)

    def block(self, ctxt, value):
        self.started.set()
        self.release.wait(30)
        return value


class Notes:
    def __init__(self):
        self.seen = []

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.seen.append(payload)


def _wait(predicate, timeout=WAIT):
    return peers.wait_for(predicate, timeout)


class Env:
    """One intermediary: transports, servers, raw sender, log counting."""

    def __init__(self, kind, caplog):
        self.kind = kind
        self.caplog = caplog
        self.peer = None
        if kind == 'rabbit':
            self.url = RABBIT_URL
        else:
            self.peer = peers.Peer(kind).start()
            self.url = self.peer.url + '/'
        self.conf = cfg.ConfigOpts()
        self.conf([], project='amqp1-bad-input')
        conffixture.ConfFixture(self.conf)  # tracing, metrics, ...
        opts.register(self.conf)
        for key, value in (('link_retry_delay', 1),
                           ('default_reply_timeout', 5),
                           ('connection_retry_interval', 1)):
            self.conf.set_override(key, value, group='oslo_messaging_amqp')
        self.transports = []
        self.servers = []
        self.topic = 'bad-' + uuid.uuid4().hex[:10]
        self.raw = utils.raw_connection(self.url, timeout=WAIT)
        self.senders = {}

    @property
    def rabbit4(self):
        props = self.raw.conn.remote_properties or {}
        return (self.kind == 'rabbit' and
                str(props.get('version', '3')).split('.')[0] >= '4')

    def transport(self, notify=False):
        get = om.get_notification_transport if notify else \
            om.get_rpc_transport
        t = get(self.conf, self.url)
        self.transports.append(t)
        return t

    def start(self, server):
        server.start()
        self.servers.append(server)
        return server

    def send(self, address, message):
        """Send with raw proton; a refusal or no outcome is fine."""
        sender = self.senders.get(address)
        if sender is None:
            sender = self.senders[address] = self.raw.create_sender(address)
        try:
            sender.send(message, timeout=WAIT)
        except proton_utils.SendException:
            pass
        except proton.Timeout:
            # the broker's outcome is not under test (once, in CI, RabbitMQ
            # 3.10 gave none in 10 s): what the driver does with the
            # message is, and the test's own waits look for it
            LOG.warning('%s: no outcome in %s s for a send to %s',
                        self.kind, WAIT, address)

    def complaints(self):
        return [r for r in self.caplog.records
                if r.levelno >= logging.WARNING and
                not r.name.startswith('tests.')]

    def feed(self, address, cases, expect_lines=1):
        """Send each case, wait for its log line; return the lines."""
        self.caplog.clear()
        lines = {}
        for name, message in cases:
            before = len(self.complaints())
            self.send(address, message)
            assert _wait(lambda: len(self.complaints()) > before), \
                '%s: %s was dropped without a log line' % (self.kind, name)
            lines[name] = [r.getMessage()[:200]
                           for r in self.complaints()[before:]]
        return lines

    def settle_lines(self, lines, extra=0.3):
        """Let late log lines arrive; check one line per message."""
        time.sleep(extra)
        total = len(self.complaints())
        assert total == len(lines), (
            '%s: %d log lines for %d malformed messages: %s' %
            (self.kind, total, len(lines),
             [r.getMessage()[:200] for r in self.complaints()]))
        for name, got in lines.items():
            assert len(got) == 1, (name, got)

    def close(self):
        for s in self.servers:
            s.stop()
            s.wait()
        for t in self.transports:
            t.cleanup()
        self.raw.close()
        if self.peer is not None:
            self.peer.stop()


KINDS = ['router', 'broker', pytest.param('rabbit', marks=pytest.mark.skipif(
    not RABBIT_URL, reason='AMQP1_TEST_RABBIT_URL is not set'))]


@pytest.fixture(params=KINDS)
def env(request, caplog):
    caplog.set_level(logging.WARNING)
    e = Env(request.param, caplog)
    yield e
    e.close()


def _drop_unsupported(env, cases):
    if env.rabbit4:
        # RabbitMQ 4 drops body-less messages before they reach anyone
        cases = [c for c in cases if c[1].body is not None]
    elif env.kind == 'rabbit':
        # RabbitMQ 3's AMQP 1.0 plugin closes the connection on an
        # amqp-value list body (framing-error): it never reaches us
        cases = [c for c in cases if not isinstance(c[1].body, list)]
    return cases


def _ctl(transport):
    return transport._driver._ctl


def _rpc_setup(env):
    t = env.transport()
    ep = Endpoint()
    target = om.Target(topic=env.topic, server='srv')
    env.start(om.get_rpc_server(t, target, [ep], executor='threading'))
    client = om.get_rpc_client(t, om.Target(topic=env.topic), timeout=20)
    assert client.call({}, 'echo', value='ready')['value'] == 'ready'
    address = _ctl(t).addresser.rpc_server(target).address
    return t, ep, client, address


def test_malformed_requests_to_rpc_server(env, report):
    _t, ep, client, address = _rpc_setup(env)
    cases = _drop_unsupported(env, malformed_requests())
    assert len(cases) >= 20
    lines = env.feed(address, cases)
    # legitimate traffic right after the batch, and nothing else ran
    reply = client.prepare(server='srv').call({'user': 'u'}, 'echo',
                                              value='after')
    assert reply == {'value': 'after', 'ctxt': {'user': 'u'}}
    assert ep.seen == ['ready', 'after']
    env.settle_lines(lines)
    for name, got in lines.items():
        assert 'malformed' in got[0], (name, got)
    report('bad input (%s): kinds of malformed request sent to a server'
           % env.kind, len(cases), limit='>= 20')
    report('bad input (%s): each rejected with one log line; the next '
           'call served' % env.kind, 'yes')


def test_odd_but_valid_requests_are_served(env):
    """Properties, subject, odd context values: ignored, served."""
    _t, ep, client, address = _rpc_setup(env)
    env.caplog.clear()
    odd = [
        _msg(_request({'method': 'note', 'args': {'value': 1}}),
             subject='not-a-method', properties={'method': 'fail', 'x': 1},
             content_type='text/plain', user_id=b'guest'),
        _msg(_body({'request': {'method': 'note', 'args': {'value': 2}},
                    'context': {'user': [1, {'a': None}], 'roles': 5,
                                'project': {'x': 1.5}, 'flag': True}})),
        _msg(_body({'request': {'method': 'note', 'args': {'value': 3}},
                    'context': None})),
        _msg(_request({'method': 'note', 'args': {'value': 4}},
                      call_monitor_timeout=None)),
    ]
    for message in odd:
        env.send(address, message)
    assert client.prepare(server='srv').call({}, 'echo', value=5)['value'] \
        == 5
    assert _wait(lambda: sorted(ep.seen[1:]) == [1, 2, 3, 4, 5])
    time.sleep(0.2)
    assert env.complaints() == []


def test_call_shaped_requests_with_bad_reply_to(env):
    """Served; the reply that cannot go anywhere is logged once."""
    _t, ep, client, address = _rpc_setup(env)
    if env.kind == 'rabbit':
        bogus = _ctl(_t).addresser.queue_address(
            'reply.' + uuid.uuid4().hex)
    else:
        bogus = 'unicast.nowhere-' + uuid.uuid4().hex
    missing = _msg(_request({'method': 'echo', 'args': {'value': 'a'}}),
                   id=uuid.uuid4().hex)
    lines = env.feed(address, [('missing-reply-to', missing)])
    env.settle_lines(lines)
    env.caplog.clear()
    env.send(address, _msg(_request(
        {'method': 'echo', 'args': {'value': 'b'}}),
        id=uuid.uuid4().hex, reply_to=bogus))
    assert _wait(lambda: ep.seen == ['ready', 'a', 'b'])
    # replies go pre-settled (the old driver's default): the intermediary
    # takes it and drops it (router, RabbitMQ) or queues it (broker); a
    # peer that refuses the link makes the driver log it once
    assert client.prepare(server='srv').call({}, 'echo', value='c')[
        'value'] == 'c'
    assert ep.seen == ['ready', 'a', 'b', 'c']
    time.sleep(1.5)
    got = [r.getMessage()[:200] for r in env.complaints()]
    assert len(got) <= 1, got


def test_malformed_notifications(env, report):
    nt = env.transport(notify=True)
    notes = Notes()
    target = om.Target(topic=env.topic)
    env.start(om.get_notification_listener(
        nt, [target], [notes], executor='threading'))
    notifier = om.Notifier(nt, 'pub', driver='messagingv2',
                           topics=[env.topic])
    notifier.info({}, 'ev', 'ready')
    assert _wait(lambda: notes.seen == ['ready'])
    address = _ctl(nt).addresser.notify_listen(
        om.Target(topic='%s.info' % env.topic), None).address
    cases = _drop_unsupported(env, malformed_requests())
    lines = env.feed(address, cases)
    notifier.info({}, 'ev', 'after')
    assert _wait(lambda: notes.seen == ['ready', 'after'])
    env.settle_lines(lines)
    report('bad input (%s): malformed notifications to a listener; the '
           'next one received' % env.kind, len(cases))


def test_malformed_replies_during_a_call(env, report):
    t, ep, client, _address = _rpc_setup(env)
    result = {}

    def call():
        result['value'] = client.prepare(server='srv', timeout=30).call(
            {}, 'block', value='in-flight')
    caller = threading.Thread(target=call)
    caller.start()
    try:
        assert ep.started.wait(WAIT)
        ctl = _ctl(t)
        reply_address = ctl.replies.address
        (in_flight,) = list(ctl.replies.calls)
        cases = _drop_unsupported(env, malformed_replies(in_flight))
        lines = env.feed(reply_address, cases)
    finally:
        ep.release.set()
        caller.join(30)
    assert result == {'value': 'in-flight'}
    assert client.call({}, 'echo', value='after')['value'] == 'after'
    env.settle_lines(lines)
    for name, got in lines.items():
        assert 'Dropped a reply' in got[0], (name, got)
    report('bad input (%s): malformed replies during a call, dropped; the '
           'call completed' % env.kind, len(cases))


@pytest.mark.parametrize('body', [
    _body({'result': 1}), _body({'failure': 5}), 'not json', b'\x01',
    _body({'failure': '{"class": 1'})])
def test_malformed_reply_to_the_call_in_flight(env, body):
    """The call fails at once, logged once; the next calls work."""
    t, ep, client, _address = _rpc_setup(env)
    errors = []

    def call():
        try:
            client.prepare(server='srv', timeout=30).call(
                {}, 'block', value='in-flight')
        except Exception as exc:
            errors.append(exc)
    caller = threading.Thread(target=call)
    caller.start()
    try:
        assert ep.started.wait(WAIT)
        ctl = _ctl(t)
        (in_flight,) = list(ctl.replies.calls)
        lines = env.feed(ctl.replies.address,
                         [('bad', _msg(body, correlation_id=in_flight))])
        caller.join(WAIT)
        assert not caller.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], om.MessageDeliveryFailure)
        env.settle_lines(lines)
        env.caplog.clear()
    finally:
        ep.release.set()
    # the late real reply is dropped (logged once); the next call works
    assert _wait(lambda: len(env.complaints()) == 1)
    assert 'Dropped a reply' in env.complaints()[0].getMessage()
    assert client.call({}, 'echo', value='after')['value'] == 'after'
