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

"""Faults on a real RabbitMQ: SIGKILLed brokers, restarts and failover.

Each test runs its own throwaway RabbitMQ node(s) (``rabbit_nodes``, see
rabbitnode.py), so killing them harms nothing else.  Figures go to the
report (``report`` fixture; ``tools/fault-report`` prints them) and the
tests assert the pass/fail conditions:

* 10,000 notifications sent while the broker is SIGKILLed and restarted
  twice all reach a listener started afterwards (duplicates counted);
* 8 threads calling across a broker restart: no call outlives its timeout
  by more than 1 s, calls succeed again within
  ``connection_retry_interval_max`` + 2 s of the broker's return, and the
  server resubscribes by itself;
* a URL with two nodes: the active one is killed, calls and notifications
  go on through the other; the gap is reported.
"""

import logging
import threading
import time

import oslo_messaging as om
import pytest

from tests.functional import utils

NOTIFICATIONS = 10000
CALL_TIMEOUT = 5
RETRY_MAX = 4


def _notify_all(node, topic, count, progress):
    """Send count notifications (payload: their number) from one thread."""
    notifier = node.notifier(topic)
    for n in range(count):
        notifier.info({}, 'fault.test', {'n': n})
        progress.append(n)


def test_notifications_survive_two_broker_kills(rabbit_nodes, report):
    rabbit = rabbit_nodes.node()
    topic = utils.unique('kill')
    sender = utils.Node(rabbit.url, default_notify_timeout=30)
    sent = []
    thread = threading.Thread(target=_notify_all,
                              args=(sender, topic, NOTIFICATIONS, sent))
    start = time.monotonic()
    restarts = []
    try:
        thread.start()
        for mark in (NOTIFICATIONS // 3, 2 * NOTIFICATIONS // 3):
            while len(sent) < mark and thread.is_alive():
                time.sleep(0.01)
            rabbit.kill()
            restarts.append(rabbit.start())
        thread.join(600)
        assert not thread.is_alive(), 'the notifier is stuck'
        send_seconds = time.monotonic() - start
        receiver = utils.Node(rabbit.url)
        try:
            receiver.listener(topic)
            got = []
            deadline = time.monotonic() + 120
            while (len(set(got)) < NOTIFICATIONS and
                   time.monotonic() < deadline):
                got += [item['payload']['n'] for item in
                        receiver.recorder.wait('notify', NOTIFICATIONS, 2)]
        finally:
            receiver.cleanup()
    finally:
        sender.cleanup()
    lost = NOTIFICATIONS - len(set(got))
    duplicates = len(got) - len(set(got))
    report('broker kill x2: notifications sent', NOTIFICATIONS)
    report('broker kill x2: notifications lost', lost, limit='0')
    report('broker kill x2: duplicates', duplicates)
    report('broker kill x2: send time', round(send_seconds, 1), 's')
    report('broker kill x2: broker restart time',
           round(max(restarts), 1), 's')
    assert lost == 0, 'lost %d of %d notifications' % (lost, NOTIFICATIONS)


class _Caller(threading.Thread):
    """Calls echo in a loop; records (start, end, ok) of every call."""

    def __init__(self, client, stop) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.stop = stop
        self.calls = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            start = time.monotonic()
            try:
                ok = self.client.call({}, 'echo', value=n)['echo'] == n
            except (om.MessagingTimeout, om.MessageDeliveryFailure):
                ok = False
                time.sleep(0.05)
            self.calls.append((start, time.monotonic(), ok))


def _run_callers(client, threads, body):
    """Run `threads` callers while body() runs; return their calls."""
    stop = threading.Event()
    callers = [_Caller(client, stop) for _ in range(threads)]
    for caller in callers:
        caller.start()
    try:
        body()
    finally:
        stop.set()
        for caller in callers:
            caller.join(CALL_TIMEOUT + 5)
    return [call for caller in callers for call in caller.calls]


def test_calls_across_broker_restart(rabbit_nodes, report):
    rabbit = rabbit_nodes.node()
    topic = utils.unique('restart')
    options = dict(connection_retry_interval=1, connection_retry_backoff=1,
                   connection_retry_interval_max=RETRY_MAX)
    server_node = utils.Node(rabbit.url, **options)
    client_node = utils.Node(rabbit.url, **options)
    back = []
    try:
        server_node.server(topic, 'srv')
        client = client_node.client(topic, timeout=CALL_TIMEOUT)
        utils.wait_ready(client, value=0)

        def restart():
            time.sleep(3)
            rabbit.kill()
            time.sleep(2)
            rabbit.start()
            back.append(time.monotonic())
            time.sleep(RETRY_MAX + 2 + CALL_TIMEOUT + 3)

        calls = _run_callers(client, 8, restart)
    finally:
        client_node.cleanup()
        server_node.cleanup()
    overrun = max(end - start - CALL_TIMEOUT for start, end, _ in calls)
    first_ok = min((end for start, end, ok in calls
                    if ok and start >= back[0]), default=None)
    assert first_ok is not None, 'no call succeeded after the restart'
    recovery = first_ok - back[0]
    failed = sum(1 for _, _, ok in calls if not ok)
    report('broker restart, 8 callers: calls', len(calls))
    report('broker restart, 8 callers: calls failed', failed)
    report('broker restart, 8 callers: worst overrun of the %d s timeout'
           % CALL_TIMEOUT, round(max(overrun, 0), 2), 's', limit='<= 1')
    report('broker restart, 8 callers: first success after the broker is '
           'back', round(recovery, 2), 's', limit='<= %d' % (RETRY_MAX + 2))
    assert overrun <= 1.0
    assert recovery <= RETRY_MAX + 2
    late = [ok for start, _, ok in calls if start >= back[0] + recovery]
    assert late and all(late), 'calls failed after the bus recovered'


def test_failover_to_the_second_node(rabbit_nodes, report):
    first, second = rabbit_nodes.node(), rabbit_nodes.node()
    url = 'amqp://guest:guest@127.0.0.1:%d,guest:guest@127.0.0.1:%d/' % (
        first.port, second.port)
    topic = utils.unique('failover')
    options = dict(connection_retry_interval=1, connection_retry_backoff=0,
                   connection_retry_interval_max=1)
    server_node = utils.Node(url, **options)
    client_node = utils.Node(url, **options)
    killed = []
    try:
        server_node.server(topic, 'srv')
        server_node.listener(topic)
        client = client_node.client(topic, timeout=CALL_TIMEOUT)
        notifier = client_node.notifier(topic)
        utils.wait_ready(client, value=0)

        def kill_first():
            time.sleep(2)
            killed.append(time.monotonic())
            first.kill()
            time.sleep(15)

        calls = _run_callers(client, 2, kill_first)
        notifier.info({}, 'fault.failover', {'n': 'after'})
        after = [item['payload']['n'] for item in
                 server_node.recorder.wait('notify', 1, 20)]
    finally:
        client_node.cleanup()
        server_node.cleanup()
    before = [end for start, end, ok in calls if ok and end <= killed[0]]
    resumed = [end for start, end, ok in calls if ok and start > killed[0]]
    assert before, 'no call succeeded on the first node'
    assert resumed, 'no call succeeded on the second node'
    gap = min(resumed) - max(before)
    report('failover: calls', len(calls))
    report('failover: gap in calls', round(gap, 2), 's')
    assert 'after' in after, 'a notification after the failover was lost'
    report('failover: notification after the failover', 'received')


def test_no_secret_in_any_log_line(rabbit_nodes, caplog, report):
    secret = 'pw-' + utils.unique('s3cret')
    wrong = 'pw-' + utils.unique('wr0ng')
    rabbit = rabbit_nodes.node(user='amqp1user', password=secret)
    topic = utils.unique('secret')
    caplog.set_level(logging.DEBUG)
    node = utils.Node(rabbit.url)
    bad = utils.Node(rabbit.url.replace(secret, wrong))
    try:
        node.server(topic, 'srv')
        node.listener(topic)
        client = node.client(topic)
        utils.wait_ready(client, value=1)
        client.cast({}, 'record', value=2)
        node.notifier(topic).info({}, 'secret.test', {'n': 3})
        assert node.recorder.wait('notify', 1, 10)
        with pytest.raises(om.MessageDeliveryFailure,
                           match='authentication'):
            bad.client(topic, timeout=10).call({}, 'echo', value=4)
    finally:
        bad.cleanup()
        node.cleanup()
    lines = [caplog.handler.format(r) for r in caplog.records]
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and
              'authentication' in r.getMessage()]
    leaks = [line for line in lines if secret in line or wrong in line]
    report('log secrecy: log lines checked (DEBUG and up)', len(lines))
    report('log secrecy: lines holding a password', len(leaks), limit='0')
    assert not leaks, leaks[:3]
    assert errors, 'the authentication failure was not logged at ERROR'
    assert '127.0.0.1:%d' % rabbit.port in errors[0], errors[0]
