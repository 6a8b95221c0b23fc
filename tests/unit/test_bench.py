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

"""tools/bench end to end, briefly, against the in-process router peer."""

import json
import os
import runpy
import subprocess
import sys

import pytest

from tests.unit import helpers

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'tools', 'bench')

RESULT_KEYS = {
    'scenario', 'payload', 'driver', 'url', 'throughput', 'latency_ms',
    'latency_kind', 'client_cpu_per_1k', 'server_cpu_per_1k',
    'client_rss_mb', 'server_rss_mb', 'sent', 'received', 'errors', 'lost',
    'elapsed', 'error_samples', 'notes', 'driver_class', 'topic',
    'probe_ms', 'steal_pct',
}


def test_bench_call_and_cast_on_router(router, tmp_path):
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, BENCH, '--duration', '1',
           '--scenarios', 'call1,cast', '--payloads', '100',
           '--drivers', 'amqp', '--amqp-url', helpers.url_of(router),
           '--json', str(out), '--no-png']
    proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report['meta']) >= {'duration', 'drivers', 'definitions'}
    results = report['results']
    assert [(r['scenario'], r['driver']) for r in results] == [
        ('call1', 'amqp'), ('cast', 'amqp')]
    for r in results:
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert r['throughput'] > 0, r
        assert r['errors'] == 0, r
        assert r['lost'] == 0, r
        assert r['payload'] == 100
        assert r['received'] > 0
        assert set(r['latency_ms']) == {'p50', 'p90', 'p99'}
        assert r['latency_ms']['p99'] >= r['latency_ms']['p50'] > 0
        assert r['client_cpu_per_1k'] > 0 and r['server_rss_mb'] > 0
        assert 'oslo_messaging_amqp1' in r['driver_class']
        # the machine's speed and the hypervisor's share, per trial
        assert r['probe_ms'] > 0
        assert 0.0 <= r['steal_pct'] <= 100.0, r['steal_pct']
    # the table went to stdout
    assert 'call1' in proc.stdout and 'msg/s' in proc.stdout


def test_bench_eventlet_and_paced_casts_on_router(router, tmp_path):
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, BENCH, '--duration', '1', '--eventlet',
           '--scenarios', 'cast', '--payloads', '100', '--rates', '50',
           '--repeat', '2',
           '--drivers', 'amqp', '--amqp-url', helpers.url_of(router),
           '--json', str(out), '--no-png']
    proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report['meta']['mode'] == 'eventlet'
    assert len(report['meta']['loadavg_start']) == 3
    full, paced, again = report['results']
    assert [(r['scenario'], r['repeat']) for r in (full, paced, again)] == [
        ('cast', 0), ('cast@50%', 0), ('cast@50%', 1)]
    for r in (full, paced, again):
        assert r['mode'] == 'eventlet' and len(r['loadavg']) == 3
        assert r['errors'] == 0 and r['lost'] == 0, r
        assert r['received'] > 0
    assert full['offered_rate'] is None
    # rate * 50 / 100 and rate / 2 may differ in the last bit
    assert paced['offered_rate'] == pytest.approx(full['throughput'] / 2)
    assert again['offered_rate'] == paced['offered_rate']
    # the schedule held the client to the offered rate (1 s window)
    for r in (paced, again):
        assert r['sent'] <= r['offered_rate'] + 1, r


def _trial(driver, p99, throughput=100.0):
    return {'scenario': 'cast@50%', 'payload': 100, 'driver': driver,
            'throughput': throughput, 'latency_ms': {'p99': p99}}


def test_ratios_compare_the_medians_of_the_repeats():
    bench = runpy.run_path(BENCH)
    results = [_trial('amqp', 2.0), _trial('rabbit', 3.0),
               _trial('amqp', 9.0), _trial('rabbit', 2.5),
               _trial('amqp', 2.2), _trial('rabbit', 40.0, 50.0)]
    row, = bench['ratios'](results)
    assert row['repeats'] == 3
    # medians: 2.2 against 3.0 ms, 100 against 100 msg/s
    assert row['p99_ratio'] == pytest.approx(2.2 / 3.0)
    assert row['throughput_ratio'] == pytest.approx(1.0)
    assert bench['median']([4.0, None, 1.0]) == pytest.approx(2.5)
    assert bench['median']([None]) is None
    # the chart draws the repeat of the median p99
    assert bench['median_trial'](results[0::2]) is results[4]
    assert bench['median_trial'](results[1::2]) is results[1]


def test_bench_rates_bad_input():
    proc = subprocess.run(
        [sys.executable, BENCH, '--rates', '150', '--no-png'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=30)
    assert proc.returncode != 0
    assert '--rates' in proc.stderr and '(0, 100]' in proc.stderr
