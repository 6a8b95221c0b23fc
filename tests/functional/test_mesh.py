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

"""Three real qdrouterd in a triangle mesh, through the driver.

Each router's configuration is written by the plugin itself
(``configure_amqp1_router`` with ``AMQP1_ROUTER_PEERS`` naming all three,
through tools/devstack-compat.sh): interior mode, an inter-router listener
and one inter-router connector per pair, authenticated with SASL PLAIN
when the binary has Cyrus SASL (anonymous otherwise). Routers A, B and C
run on 127.0.0.1 on ports of their own; RPC servers attach to A, clients
to C. Needs ``AMQP1_TEST_QDROUTERD`` (a qdrouterd binary); every test
skips without it.

* calls, casts and fanout from C reach servers on A (and B), and
  notifications sent on C reach a listener on A through a link route to a
  broker (the in-process broker of tests/peers.py) attached to B as a
  ``route-container``, as the router documentation describes;
* B is SIGKILLed while a client on C calls a server on A; the A-C link
  costs more than A-B-C, so the calls went through B: they move to the
  direct link. Measured: the longest time without a successful call after
  the kill returned, and the calls that failed;
* A, the server's router, is SIGKILLed while calls run; the server's URL
  lists A then B: it reconnects to B and calls resume. Measured: the time
  from the kill until the first successful call, and the calls that failed;
* tools/scale through the mesh: 1,000 RPC servers (``AMQP1_SCALE_SERVERS``)
  in 4 processes spread over A, B and C, the client on A.

Both kills assert gaps under 30 s and that only the call in flight when
the router died may fail: the surviving router answers it ``modified``
with delivery-failed (it may have reached the server), which the driver
reports as MessageDeliveryFailure instead of resending; every call made
after the kill succeeds (``released`` ones are resent).

Figures go to the report (``report`` fixture; ``tools/fault-report``).
"""

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.functional import conftest
from tests.functional import utils
from tests import peers

LOG = logging.getLogger(__name__)
REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
USER, PASSWORD = 'meshuser', 'mesh-s3cret'
CALL_TIMEOUT = 5
GAP_LIMIT = 30.0
# the mesh is complete (every router knows the others) within this
MESH_TIMEOUT = 30.0
# the A-C connection's cost: above A-B + B-C (1 + 1), so A-B-C is the path
DIRECT_COST = 10
SCALE = os.path.join(REPO_DIR, 'tools', 'scale')
NOTIFY_PREFIX = 'openstack.org/om/notify'
OPTIONS = dict(connection_retry_interval=1, connection_retry_backoff=0,
               connection_retry_interval_max=1)


def _has_cyrus_sasl(binary: str) -> bool:
    """Can the binary check SASL PLAIN passwords (Cyrus SASL linked)?"""
    if shutil.which('saslpasswd2') is None:
        return False
    libs = subprocess.run(['ldd', binary], capture_output=True,
                          text=True).stdout
    return 'libsasl2' in libs


class MeshRouter(conftest.Daemon):
    """A qdrouterd configured by the plugin as a member of a mesh."""

    name = 'qdrouterd'

    def __init__(self, binary: str, workdir: str, router_id: str,
                 port: int, inter_port: int, mesh_ports: list,
                 users: dict, extra: str = '',
                 direct_cost: dict = None) -> None:
        self.router_id = router_id
        self.fixed_port = port
        self.inter_port = inter_port
        self.mesh_ports = mesh_ports
        self.extra = extra
        # inter-router port of a peer -> cost of this router's connector
        self.direct_cost = dict(direct_cost or {})
        super().__init__(binary, workdir, users)

    def configure(self) -> None:
        self.port = self.fixed_port
        env = dict(
            os.environ,
            AMQP1_STANDALONE_DIR=os.path.join(self.workdir, 'standalone'),
            AMQP1_CONF_DIR=os.path.join(self.workdir, 'etc'),
            AMQP1_LOG_DIR=self.workdir,
            AMQP1_SERVICE='qpid-hybrid', AMQP1_ROLE='server',
            AMQP1_LISTEN_ADDRESS=conftest.LOCALHOST,
            AMQP1_DEFAULT_PORT=str(self.port),
            AMQP1_ROUTER_ID=self.router_id,
            AMQP1_ROUTER_THREADS='2',
            AMQP1_ROUTER_ADDRESS=conftest.LOCALHOST,
            AMQP1_ROUTER_INTER_PORT=str(self.inter_port),
            AMQP1_ROUTER_PEERS=' '.join('%s:%d' % (conftest.LOCALHOST, p)
                                        for p in self.mesh_ports))
        for name in ('AMQP1_USERNAME', 'AMQP1_PASSWORD', 'AMQP1_ANONYMOUS',
                     'AMQP1_SSL'):
            env.pop(name, None)
        if self.users:
            user, password = next(iter(self.users.items()))
            env.update(AMQP1_USERNAME=user, AMQP1_PASSWORD=password)
        else:
            env.update(AMQP1_ANONYMOUS='True')
        script = ('source tools/devstack-compat.sh && '
                  'source devstack/settings && source devstack/plugin.sh && '
                  'amqp1_check_settings && configure_amqp1_router')
        out = subprocess.run(['bash', '-c', script], cwd=REPO_DIR, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        self.conf = os.path.join(self.workdir, 'etc', 'qdrouterd.conf')
        with open(self.conf) as f:
            text = f.read()
        for peer_port, cost in self.direct_cost.items():
            text = _set_connector_cost(text, peer_port, cost)
        self._write(self.conf, text + self.extra)

    def command(self) -> list:
        return [self.binary, '-c', self.conf]

    def client_url(self, *others: 'MeshRouter') -> str:
        """The URL of this router, then of others (failover order)."""
        hosts = []
        for router in (self,) + others:
            cred = ''
            if router.users:
                cred = '%s:%s@' % next(iter(router.users.items()))
            hosts.append('%s%s:%d' % (cred, conftest.LOCALHOST, router.port))
        return 'amqp://%s/' % ','.join(hosts)

    def connector_ports(self) -> list:
        """Inter-router ports this router's connectors dial."""
        ports, inside = [], False
        with open(self.conf) as f:
            for line in f:
                line = line.strip()
                if line == 'connector {':
                    inside = True
                elif inside and line.startswith('port:'):
                    ports.append(int(line.split(':', 1)[1]))
                    inside = False
        return ports


def _set_connector_cost(text: str, peer_port: int, cost: int) -> str:
    """Add cost to the connector that dials peer_port."""
    marker = '    port: %d\n    role: inter-router\n' % peer_port
    assert marker in text, 'no connector to port %d' % peer_port
    return text.replace(marker, marker + '    cost: %d\n' % cost)


def _link_route(broker_port: int) -> str:
    """B's connection to the broker and its link routes (in and out)."""
    return '''
# test_mesh.py: notifications go to a broker through a link route
connector {
    name: notify-broker
    host: %s
    port: %d
    role: route-container
    saslMechanisms: ANONYMOUS
}

linkRoute {
    prefix: %s
    direction: in
    connection: notify-broker
}

linkRoute {
    prefix: %s
    direction: out
    connection: notify-broker
}
''' % (conftest.LOCALHOST, broker_port, NOTIFY_PREFIX, NOTIFY_PREFIX)


class Mesh(object):
    """Routers A, B, C in a triangle and the broker behind B."""

    def __init__(self, routers: dict, broker: peers.Peer, users: dict):
        self.routers = routers
        self.broker = broker
        self.users = users

    def __getitem__(self, name: str) -> MeshRouter:
        return self.routers[name]


def _broker_for_notifications() -> peers.Peer:
    """The in-process broker; it makes a queue for any notify address."""
    broker = peers.Peer('broker')

    def make_queue(address, role):
        if address and address.startswith(NOTIFY_PREFIX):
            broker.queues.setdefault(address, peers._Queue(address))
        return None
    broker.refuse_attach = make_queue
    return broker.start()


def _last_computed(router: MeshRouter, what: str) -> dict:
    """The router's last logged 'Computed <what>' table (ROUTER_LS)."""
    table = {}
    marker = 'Computed %s: ' % what
    with open(router.log_file, errors='replace') as f:
        for line in f:
            if marker in line:
                table = ast.literal_eval(line.split(marker, 1)[1].strip())
    return table


def _wait_mesh(routers: dict, timeout: float = MESH_TIMEOUT) -> float:
    """Wait until every router has a route to the other two."""
    start = time.monotonic()
    while True:
        complete = True
        for router in routers.values():
            others = {r.router_id for r in routers.values()} - {
                router.router_id}
            if not others <= set(_last_computed(router, 'costs')):
                complete = False
        if complete:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError('the mesh did not form within %ss:\n%s' % (
                timeout, '\n'.join(r.log_tail() for r in routers.values())))
        time.sleep(0.2)


def _wait_link_route(router: MeshRouter, broker: peers.Peer,
                     timeout: float = MESH_TIMEOUT) -> float:
    """Wait until a receiver attached on router reaches the broker.

    Until the router has learnt B's link route, a receiver for a
    notification address is a plain consumer on the router itself.
    """
    address = '%s/probe/%s' % (NOTIFY_PREFIX, uuid.uuid4().hex)
    url = router.client_url()
    start = time.monotonic()
    while True:
        conn = utils.raw_connection(url, timeout=5)
        try:
            conn.create_receiver(address)
            if any(link[1] == address for link in broker.links()):
                return time.monotonic() - start
        finally:
            conn.close()
        if time.monotonic() - start > timeout:
            raise AssertionError('%s does not route %s to the broker' % (
                router.router_id, address))
        time.sleep(0.2)


@pytest.fixture
def mesh(tmp_path_factory, report):
    """A, B, C in a triangle (A-C costly), the broker linked from B."""
    binary = conftest.daemon_binary('qdrouterd')
    users = {USER: PASSWORD} if _has_cyrus_sasl(binary) else {}
    if not users:
        LOG.warning('%s has no Cyrus SASL: the mesh runs anonymous', binary)
    ports = {}
    for name in 'ABC':
        client_port = conftest.free_port()
        inter_port = conftest.free_port()
        while inter_port == client_port:
            inter_port = conftest.free_port()
        ports[name] = (client_port, inter_port)
    mesh_ports = [ports[name][1] for name in 'ABC']
    broker = _broker_for_notifications()
    routers = {}
    try:
        for name in 'ABC':
            workdir = str(tmp_path_factory.mktemp('mesh-' + name))
            routers[name] = MeshRouter(
                binary, workdir, 'mesh-%s-%d' % (name, ports[name][0]),
                ports[name][0], ports[name][1], mesh_ports, users,
                extra=_link_route(broker.port) if name == 'B' else '')
        # the A-C connection: whichever of the two dials the other
        a, c = routers['A'], routers['C']
        dialer, dialed = (a, c) if c.inter_port in a.connector_ports() \
            else (c, a)
        assert dialed.inter_port in dialer.connector_ports()
        dialer.direct_cost = {dialed.inter_port: DIRECT_COST}
        dialer.configure()
        for name in 'ABC':
            routers[name].start()
        formed = _wait_mesh(routers)
    except BaseException:
        mesh_stop(routers, broker)
        raise
    LOG.info('mesh formed in %.2f s (SASL %s)', formed,
             'PLAIN' if users else 'off')
    # the costly A-C link: once all three are known C reaches A through B
    deadline = time.monotonic() + MESH_TIMEOUT
    while True:
        hops = _last_computed(routers['C'], 'next hops')
        if hops.get(routers['A'].router_id) == routers['B'].router_id:
            break
        if time.monotonic() > deadline:
            mesh_stop(routers, broker)
            raise AssertionError('C does not route to A through B: %s'
                                 % hops)
        time.sleep(0.2)
    report('mesh: SASL PLAIN between routers and clients', bool(users))
    try:
        for name in 'AC':
            _wait_link_route(routers[name], broker)
    except BaseException:
        mesh_stop(routers, broker)
        raise
    yield Mesh(routers, broker, users)
    mesh_stop(routers, broker)


def mesh_stop(routers: dict, broker: peers.Peer) -> None:
    """Stop the routers and the broker."""
    for router in routers.values():
        router.stop()
    broker.stop()


def _calls_while(client, body) -> list:
    """Run a Caller while body() runs; its (start, end, ok) calls.

    Why calls failed is logged.
    """
    stop = threading.Event()
    caller = utils.Caller(client, stop)
    caller.start()
    try:
        body()
    finally:
        stop.set()
        caller.join(CALL_TIMEOUT + 10)
    assert not caller.is_alive(), 'the caller is stuck'
    for start, error in caller.errors:
        LOG.info('call failed (started at %.3f): %s', start, error)
    return caller.calls


def _longest_gap(calls: list, since: float) -> float:
    """Longest time without a successful call after `since`."""
    ends = sorted(end for _, end, ok in calls if ok and end > since)
    if not ends:
        return float('inf')
    marks = [since] + ends
    return max(b - a for a, b in zip(marks, marks[1:]))


def _failures(calls: list, since: float) -> str:
    """Failed calls as "started at +s (lasted s)" relative to since."""
    return ', '.join('%+.2f (%.2f)' % (start - since, end - start)
                     for start, end, ok in calls if not ok) or '-'


def _assert_only_in_flight_lost(calls: list, killed: float) -> None:
    """Only the call in flight when the router died may fail.

    The router answers it 'modified' (delivery-failed: it may have reached
    the server), which the driver does not resend; every call made after
    the kill returned must succeed (released ones are resent).
    """
    in_flight = [c for c in calls if not c[2] and c[0] < killed]
    later = [c for c in calls if not c[2] and c[0] >= killed]
    assert len(in_flight) <= 1, in_flight
    assert not later, 'calls made after the kill failed: %s' % later


def _first_success(calls: list, since: float):
    """Seconds from since to the first success of a call started after."""
    ends = [end for start, end, ok in calls if ok and start >= since]
    return (min(ends) - since) if ends else None


def test_mesh_calls_casts_fanout_and_notifications(mesh, report):
    topic = utils.unique('mesh')
    server_a = utils.Node(mesh['A'].client_url(), **OPTIONS)
    server_b = utils.Node(mesh['B'].client_url(), **OPTIONS)
    client_c = utils.Node(mesh['C'].client_url(), **OPTIONS)
    try:
        server_a.server(topic, 'srv-a')
        server_b.server(topic, 'srv-b', recorder=server_a.recorder)
        server_a.listener(topic)
        # a call to the server on A by name, from C
        client = client_c.client(topic, server='srv-a')
        start = time.monotonic()
        first = utils.wait_ready(client, value=0, timeout=30)
        report('mesh: first call C -> A after start', round(
            time.monotonic() - start, 2), 's')
        assert first['server'] == 'srv-a'
        server_a.recorder.wait('call', 1, 1)
        answers = [client.call({}, 'echo', value=n) for n in range(1, 21)]
        assert [a['echo'] for a in answers] == list(range(1, 21))
        assert {a['server'] for a in answers} == {'srv-a'}
        # casts to the topic (either server)
        caster = client_c.client(topic)
        for n in range(10):
            caster.cast({}, 'record', value=n)
        casts = server_a.recorder.wait('cast', 10, 15)
        assert sorted(c['value'] for c in casts) == list(range(10))
        # fanout reaches the servers on A and B
        fanout = client_c.client(topic, fanout=True)
        utils.wait_fanout_ready(
            lambda token: fanout.cast({}, 'probe', token=token),
            lambda t: server_a.recorder.wait('probe', 2, t), timeout=30)
        server_a.recorder.wait('probe', 100, 1)
        fanout.cast({}, 'fanned', value='all')
        fanned = server_a.recorder.wait('fanout', 2, 15)
        assert sorted(f['server'] for f in fanned) == ['srv-a', 'srv-b']
        # notifications from C reach the listener on A through the broker
        notifier = client_c.notifier(topic)
        got = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            notifier.info({}, 'mesh.test', {'n': 'first'})
            got = server_a.recorder.wait('notify', 1, 2)
        assert got, 'no notification reached the listener on A'
        for n in range(20):
            notifier.info({}, 'mesh.test', {'n': n})
        later = server_a.recorder.wait('notify', 20, 20)
        numbers = [item['payload']['n'] for item in later]
        assert set(range(20)) <= set(numbers), numbers
        queues = [q for q in mesh.broker.queues if topic in q]
    finally:
        client_c.cleanup()
        server_b.cleanup()
        server_a.cleanup()
    report('mesh: calls C -> A', len(answers) + 1)
    report('mesh: casts, fanout (2 servers), notifications',
           '%d, %d, %d' % (len(casts), len(fanned), len(numbers) + 1))
    report('mesh: broker queues behind the link route', ', '.join(queues))
    assert queues, 'the notifications did not go through the broker'


def _calls_across_kill(mesh, topic, server_url, victim, settle):
    """Calls from C to a server on server_url while router victim dies.

    The router is SIGKILLed 3 s into the calls, which go on for settle
    seconds more. Returns (calls, when the kill returned, the answer to
    one more call made afterwards).
    """
    server = utils.Node(server_url, **OPTIONS)
    client_c = utils.Node(mesh['C'].client_url(), **OPTIONS)
    killed = []
    try:
        server.server(topic, 'srv')
        client = client_c.client(topic, timeout=CALL_TIMEOUT)
        utils.wait_ready(client, value=0, timeout=30)

        def kill():
            time.sleep(3)
            mesh[victim].kill()
            killed.append(time.monotonic())
            time.sleep(settle)

        calls = _calls_while(client, kill)
        after = client.call({}, 'echo', value=-1)
    finally:
        client_c.cleanup()
        server.cleanup()
    return calls, killed[0], after


def test_mesh_kill_transit_router(mesh, report):
    calls, killed_at, after = _calls_across_kill(
        mesh, utils.unique('transit'), mesh['A'].client_url(), 'B', 15)
    before = [c for c in calls if c[1] <= killed_at]
    gap = _longest_gap(calls, killed_at)
    failed = sum(1 for _, _, ok in calls if not ok)
    report('mesh kill B (transit): calls', len(calls))
    report('mesh kill B (transit): calls before the kill', len(before))
    report('mesh kill B (transit): calls failed', failed)
    report('mesh kill B (transit): failed calls, start from the kill '
           '(duration)', _failures(calls, killed_at), 's')
    report('mesh kill B (transit): longest gap after the kill',
           round(gap, 2), 's', limit='< %g' % GAP_LIMIT)
    assert any(ok for _, _, ok in before), 'no call before the kill'
    assert after['echo'] == -1
    assert gap < GAP_LIMIT
    _assert_only_in_flight_lost(calls, killed_at)


def test_mesh_kill_server_router(mesh, report):
    # the server's URL lists A then B; the client stays on C
    calls, killed_at, after = _calls_across_kill(
        mesh, utils.unique('failover'), mesh['A'].client_url(mesh['B']),
        'A', 20)
    resumed = _first_success(calls, killed_at)
    gap = _longest_gap(calls, killed_at)
    failed = sum(1 for _, _, ok in calls if not ok)
    report('mesh kill A (server\'s router): calls', len(calls))
    report('mesh kill A (server\'s router): calls failed', failed)
    report('mesh kill A (server\'s router): failed calls, start from the '
           'kill (duration)', _failures(calls, killed_at), 's')
    report('mesh kill A (server\'s router): first success after the kill',
           None if resumed is None else round(resumed, 2), 's',
           limit='< %g' % GAP_LIMIT)
    report('mesh kill A (server\'s router): longest gap after the kill',
           round(gap, 2), 's')
    assert resumed is not None, 'no call succeeded after A was killed'
    assert resumed < GAP_LIMIT
    assert after['echo'] == -1
    _assert_only_in_flight_lost(calls, killed_at)


def test_mesh_scale(mesh, report, tmp_path):
    servers = int(os.environ.get('AMQP1_SCALE_SERVERS', '1000'))
    # worker N starts at router N of the URL (tools/scale rotates it)
    url = mesh['A'].client_url(mesh['B'], mesh['C'])
    out = tmp_path / 'scale.json'
    run = subprocess.run(
        [sys.executable, SCALE, '--url', url, '--servers', str(servers),
         '--json', str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    (figures,) = json.loads(out.read_text())
    label = 'mesh scale (%d servers, %d processes)' % (
        servers, figures['processes'])
    report(label + ': start until all answered',
           round(figures['start_s'], 1), 's')
    report(label + ': fanout reaching all', round(figures['fanout_s'], 2),
           's')
    report(label + ': calls to random servers, 8 threads',
           round(figures['calls_per_s']), '/s')
    report(label + ': call p50 / p99', '%.1f / %.1f' % (
        figures['call_p50_ms'], figures['call_p99_ms']), 'ms')
    report(label + ': worker RSS per server',
           round(figures['rss_per_server_mb'], 3), 'MB')
    report(label + ': stop', round(figures['stop_s'], 1), 's')
    assert figures['fanout_reached'] == servers
    assert figures['call_errors'] == 0
