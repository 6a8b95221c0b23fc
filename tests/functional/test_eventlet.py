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

"""Monkey-patched services on the driver, with both cores busy.

Each test runs tests/functional/eventlet_service.py (its docstring lists
the scenarios) in a fresh interpreter that patches first, on every bus
this machine has: the in-process router
and broker peers (tests/peers.py), RabbitMQ (AMQP1_TEST_RABBIT_URL), and
qdrouterd / qpidd when AMQP1_TEST_QDROUTERD / AMQP1_TEST_QPIDD name them.
Two niced busy loops run meanwhile: races between native threads (the
I/O thread before it became green, RabbitMQ 3.x declaration helpers) and
the hub show only when the cores are busy, and mostly at start-up, so the
traffic scenario starts several times.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import peers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RABBIT_URL = os.environ.get('AMQP1_TEST_RABBIT_URL')
STARTS = int(os.environ.get('AMQP1_EVENTLET_STARTS', '4'))
BUSES = ['router-peer', 'broker-peer', 'rabbit', 'qdrouterd', 'qpidd']


@pytest.fixture(scope='module')
def busy_cores():
    """Two niced busy loops for the module's duration."""
    procs = [subprocess.Popen(['nice', '-n', '5', sys.executable, '-c',
                               'while True: pass'])
             for _i in range(2)]
    yield
    for proc in procs:
        proc.kill()
        proc.wait()


class Bus(object):
    """A bus of one kind, started for one test; url and stop()."""

    def __init__(self, kind, request):
        self.peer = None
        if kind.endswith('-peer'):
            self.peer = peers.Peer(kind[:-len('-peer')]).start()
            self.url = self.peer.url + '/'
        elif kind == 'rabbit':
            if not RABBIT_URL:
                pytest.skip('AMQP1_TEST_RABBIT_URL is not set (no RabbitMQ)')
            self.url = RABBIT_URL
        else:
            daemon = request.getfixturevalue(kind)
            self.url = daemon.url()

    def stop(self):
        if self.peer is not None:
            self.peer.stop()
            self.peer = None


@pytest.fixture(params=BUSES)
def bus(request, busy_cores):
    found = Bus(request.param, request)
    yield found
    found.stop()


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
    env['PYTHONWARNINGS'] = 'ignore'
    return env


def _cmd(scenario, url, *options):
    return [sys.executable, '-m', 'tests.functional.eventlet_service',
            scenario, url] + list(options)


def _run(scenario, url, *options, timeout=120):
    proc = subprocess.run(_cmd(scenario, url, *options), cwd=ROOT,
                          env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert 'greenlet.error' not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['patched'] is True
    return result


def test_traffic_and_io_thread_logging(bus, report):
    for _start in range(STARTS):
        result = _run('traffic', bus.url)
        assert result['calls'] is True
        assert result['casts'] is True
        assert result['fanout'] is True
        assert result['notifications'] == 300
        # records made on the I/O loop (a green thread of the hub) and on
        # native helpers, all handled on the hub's OS thread
        assert 'amqp1-io' in result['log_threads']
        assert result['log_records_off_main_thread'] == []
        assert result['warnings'] == []
    report('eventlet (%s): service starts, all traffic through'
           % bus.url.split('@')[-1], STARTS)


def test_driver_imported_before_monkey_patching(bus):
    # eventlet then patches os.read in the os module the driver holds
    result = _run('traffic', bus.url, '--import-first', timeout=60)
    assert result['calls'] is True
    assert result['notifications'] == 300
    assert result['log_records_off_main_thread'] == []


def test_thousand_green_calls_wait_without_cpu(bus, report):
    result = _run('idle', bus.url)
    assert result['in_flight'] is True
    assert result['answered'] is True
    report('eventlet: CPU seconds in 2 s with 1,000 green calls waiting',
           result['cpu_while_waiting'], 's', '< 0.1')
    assert result['cpu_while_waiting'] < 0.1


def _run_signalled(scenario, url, between):
    """Start scenario, run between() once it is ready; wait for the end.

    Returns its result line and the seconds from between()'s return to the
    process's exit.
    """
    proc = subprocess.Popen(_cmd(scenario, url), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == 'ready'
        between(proc)
        start = time.monotonic()
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert 'greenlet.error' not in err, err[-3000:]
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), elapsed


@pytest.mark.parametrize('bus_gone', [False, True],
                         ids=['bus-up', 'bus-gone'])
def test_sigterm_stops_the_service_promptly(bus, bus_gone, report):
    if bus_gone and bus.peer is None:
        pytest.skip('only an in-process peer can be stopped here')

    def terminate(proc):
        if bus_gone:
            bus.stop()
            time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
    result, elapsed = _run_signalled('sigterm', bus.url, terminate)
    report('eventlet: SIGTERM to exit, calls and casts blocked%s'
           % (', bus gone' if bus_gone else ''), round(elapsed, 2), 's',
           '<= 2')
    assert elapsed <= 2.0, result


def test_notifications_sent_before_any_listener(bus):
    # a router releases them until the listener attaches; a broker keeps them
    result = _run('late', bus.url)
    assert result['errors'] == []
    assert result['received'] == 100


def test_listener_slower_than_the_notifier(bus, report):
    result = _run('slow', bus.url)
    # one at a time, 5 ms each: the listener was the slower side
    assert result['receive_seconds'] >= 5.0
    assert result['errors'] == []
    assert result['received'] == 1000
    report('eventlet: 1,000 notifications to a 5 ms listener, send time',
           result['send_seconds'], 's')


def test_calls_resume_after_the_bus_restarts(bus, report):
    if bus.peer is None:
        pytest.skip('only an in-process peer is restarted here '
                    '(test_faults.py kills RabbitMQ and the daemons)')

    def restart(proc):
        kind, port = bus.peer.kind, bus.peer.port
        bus.stop()
        time.sleep(1.0)
        bus.peer = peers.Peer(kind, port=port).start()
    result, back = _run_signalled('reconnect', bus.url, restart)
    assert result['new_connection'] is True
    assert result['after'] == 'after'
    report('eventlet: bus restarted, calls back after', round(back, 2), 's')
    report('eventlet: calls failed across the restart',
           result['failed_calls'])
