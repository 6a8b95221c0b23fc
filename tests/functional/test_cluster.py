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

"""A three-node RabbitMQ cluster with quorum queues, through the driver.

Three throwaway nodes (rabbitnode.py) share a cookie and are joined with
``rabbitmqctl join_cluster``; the URL lists all three. Each test runs on
the host's RabbitMQ and again on the RabbitMQ 4 of the chroot that
``../shared/tools/rabbitmq4-chroot`` builds on a Debian 12 host
(``AMQP1_TEST_RABBITMQ4_CHROOT``, default /var/tmp/rabbitmq4-chroot;
skipped when there is none). ``rabbit_quorum_queue = True`` makes the RPC
and notification queues quorum queues (replicated on every node).
Measured, for tools/fault-report:

* the node holding the connections is SIGKILLed while 4 threads call and
  10,000 notifications are sent: the gap until calls succeed again, the
  calls that failed, notifications lost (must be 0) and duplicated; the
  killed node then rejoins;
* a rolling restart of all three nodes while calls and notifications flow
  (the notifier goes on past 10,000 until the last node is back, so that
  each restart has notifications in flight): 0 notifications lost, calls
  succeed after it.
"""

import json
import os
import threading
import time

import pytest

from tests.functional import conftest
from tests.functional import utils

NOTIFICATIONS = 10000
CALL_TIMEOUT = 5
# the longest a call may take to come back after a node's death
RECOVERY = 6 * CALL_TIMEOUT
OPTIONS = dict(rabbit_quorum_queue=True, connection_retry_interval=1,
               connection_retry_backoff=0, connection_retry_interval_max=1,
               default_notify_timeout=60)


RMQ4_CHROOT = os.environ.get('AMQP1_TEST_RABBITMQ4_CHROOT',
                             '/var/tmp/rabbitmq4-chroot')


@pytest.fixture(params=['host', 'rabbitmq4-chroot'])
def cluster(request, tmp_path_factory, report):
    """Three clustered nodes, the URL naming all of them, a report label."""
    root = None
    if request.param != 'host':
        root = RMQ4_CHROOT
        if not os.path.isdir(os.path.join(root, 'usr/lib/rabbitmq')):
            pytest.skip('no RabbitMQ chroot at %s (build it with '
                        '../shared/tools/rabbitmq4-chroot start)' % root)
    factory = conftest.RabbitNodes(tmp_path_factory, root)
    try:
        nodes = factory.cluster(3)
        members = nodes[0].ctl('cluster_status', '--formatter', 'json')
        for node in nodes:
            assert node.node_name in members, 'not clustered: %s' % members
        url = 'amqp://%s/' % ','.join('guest:guest@127.0.0.1:%d' % node.port
                                      for node in nodes)
        version = nodes[0].ctl('version').strip().splitlines()[-1]
        yield nodes, url, 'RabbitMQ %s cluster' % version
    finally:
        factory.remove_all()


class Traffic:
    """Calls from 4 threads and notifications from one, on one cluster."""

    def __init__(self, url, topic):
        self.server = utils.Node(url, **OPTIONS)
        self.client_node = utils.Node(url, **OPTIONS)
        self.topic = topic
        self.server.server(topic, 'srv')
        self.server.listener(topic)
        self.client = self.client_node.client(topic, timeout=CALL_TIMEOUT)
        utils.wait_ready(self.client, value=0, timeout=60)
        self.stop = threading.Event()
        # set: the notifier goes on past NOTIFICATIONS until it is cleared
        self.more = threading.Event()
        self.sent = []
        self._callers = [utils.Caller(self.client, self.stop)
                         for _ in range(4)]
        self._notifier = threading.Thread(target=self._notify, daemon=True)
        self._threads = self._callers + [self._notifier]

    def _notify(self):
        notifier = self.client_node.notifier(self.topic)
        n = 0
        while n < NOTIFICATIONS or self.more.is_set():
            notifier.info({}, 'cluster.test', {'n': n})
            self.sent.append(n)
            n += 1

    def start(self):
        for thread in self._threads:
            thread.start()

    def wait_sent(self, count, timeout=300):
        deadline = time.monotonic() + timeout
        while len(self.sent) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.sent) >= count, 'the notifier is stuck'

    def finish(self, timeout=300, recovered_after=None):
        """Stop the callers, let every notification out.

        With recovered_after (a monotonic time), the callers go on until a
        call started after it succeeded, for up to RECOVERY seconds: the
        notifications may all be out before the calls are back.
        Returns (notifications sent, notifications received, calls).
        """
        self.more.clear()
        self.wait_sent(NOTIFICATIONS, timeout)
        self._notifier.join(timeout)
        assert not self._notifier.is_alive(), 'the notifier is stuck'
        deadline = time.monotonic() + RECOVERY
        while (recovered_after is not None and
               _gap(self.calls(), recovered_after) is None and
               time.monotonic() < deadline):
            time.sleep(0.1)
        self.stop.set()
        for thread in self._callers:
            thread.join(CALL_TIMEOUT + 60)
        sent = len(self.sent)
        got = []
        deadline = time.monotonic() + 120
        while len(set(got)) < sent and time.monotonic() < deadline:
            got += [item['payload']['n'] for item in
                    self.server.recorder.wait('notify', sent, 2)]
        return sent, got, self.calls()

    def calls(self):
        """(start, end, ok) of every call made so far."""
        return [call for caller in self._callers for call in caller.calls]

    def errors(self, after):
        """The failures of calls started after `after`, one per line."""
        return '\n'.join('%.2f s: %s' % (start - after, text)
                         for caller in self._callers
                         for start, text in caller.errors if start >= after)

    def cleanup(self):
        self.stop.set()
        self.client_node.cleanup()
        self.server.cleanup()


def _gap(calls, at):
    """Seconds from `at` until the first call started after it succeeds."""
    after = [end for start, end, ok in calls if ok and start >= at]
    return (min(after) - at) if after else None


def test_cluster_node_kill_loses_no_notification(cluster, report):
    nodes, url, label = cluster
    topic = utils.unique('cluster')
    traffic = Traffic(url, topic)
    try:
        traffic.start()
        traffic.wait_sent(NOTIFICATIONS // 3)
        queues = json.loads(nodes[1].ctl('list_queues', 'name', 'type',
                                         '--formatter', 'json'))
        ours = [q['type'] for q in queues if topic in q['name']]
        report('%s kill: queues of the test (type)' % label,
               ', '.join(ours))
        # the URL's first node holds every connection; the gap counts
        # from its death (kill() returns once the VM is gone), so that a
        # call it answered while dying is not taken for the first after
        nodes[0].kill()
        killed_at = time.monotonic()
        traffic.wait_sent(2 * NOTIFICATIONS // 3)
        rejoin = nodes[0].start()
        sent, got, calls = traffic.finish(recovered_after=killed_at)
    finally:
        traffic.cleanup()
    members = nodes[1].ctl('cluster_status', '--formatter', 'json')
    lost = sent - len(set(got))
    gap = _gap(calls, killed_at)
    failed = sum(1 for _, _, ok in calls if not ok)
    report(label + ' kill: calls', len(calls))
    report(label + ' kill: calls failed', failed)
    report(label + ' kill: gap until calls succeed',
           None if gap is None else round(gap, 2), 's')
    report(label + ' kill: notifications lost', lost, limit='0')
    report(label + ' kill: duplicates', len(got) - len(set(got)))
    report(label + ' kill: killed node back in', round(rejoin, 1), 's')
    # RPC topic and server queues and the notification queue: replicated
    assert ours.count('quorum') >= 3, queues
    assert gap is not None, 'no call succeeded within %d s of the kill:\n%s' \
        % (time.monotonic() - killed_at, traffic.errors(killed_at))
    assert lost == 0, 'lost %d of %d notifications' % (lost, sent)
    assert '"running_nodes"' in members and nodes[0].node_name in \
        members.split('"running_nodes"', 1)[1], 'killed node did not rejoin'


def test_cluster_rolling_restart_loses_nothing(cluster, report):
    nodes, url, label = cluster
    traffic = Traffic(url, utils.unique('rolling'))
    try:
        # without it, 10,000 can all be out before the last restart
        traffic.more.set()
        traffic.start()
        start = time.monotonic()
        for node in nodes:
            traffic.wait_sent(len(traffic.sent) + 500)
            node.ctl('stop_app')
            node.ctl('start_app')
        restarted = time.monotonic()
        # calls go on after the last node is back
        time.sleep(CALL_TIMEOUT + 3)
        sent, got, calls = traffic.finish()
    finally:
        traffic.cleanup()
    lost = sent - len(set(got))
    failed = sum(1 for _, _, ok in calls if not ok)
    late = [ok for s, _, ok in calls if s >= restarted + CALL_TIMEOUT]
    report(label + ' rolling restart: time for all three',
           round(restarted - start, 1), 's')
    report(label + ' rolling restart: calls', len(calls))
    report(label + ' rolling restart: calls failed', failed)
    report(label + ' rolling restart: notifications sent', sent)
    report(label + ' rolling restart: notifications lost', lost, limit='0')
    report(label + ' rolling restart: duplicates', len(got) - len(set(got)))
    assert lost == 0, 'lost %d of %d notifications' % (lost, sent)
    assert late and all(late), 'calls fail after the rolling restart'
