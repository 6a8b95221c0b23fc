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

"""tools/scale: many servers over worker processes, on an in-process router."""

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys

from tests.unit import helpers

SCALE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'tools', 'scale')


def test_scale_reaches_every_server(make_peer, tmp_path):
    router = make_peer('router')
    out = tmp_path / 'scale.json'
    run = subprocess.run(
        [sys.executable, SCALE, '--url', helpers.url_of(router),
         '--servers', '30', '--processes', '3', '--calls', '200',
         '--callers', '4', '--json', str(out)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (figures,) = json.loads(out.read_text())
    assert figures['servers'] == 30 and figures['processes'] == 3
    # one fanout cast reached all 30, every call was answered
    assert figures['fanout_reached'] == 30
    assert figures['call_errors'] == 0
    assert figures['calls_per_s'] > 0
    assert figures['call_p50_ms'] <= figures['call_p99_ms']
    assert figures['start_s'] > 0 and figures['stop_s'] >= 0
    assert 'amqp' in run.stderr.splitlines()[-1]


def test_scale_wants_a_url():
    run = subprocess.run([sys.executable, SCALE], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert 'give at least one --url' in run.stderr


def _load_scale():
    loader = importlib.machinery.SourceFileLoader('amqp1_scale', SCALE)
    spec = importlib.util.spec_from_loader('amqp1_scale', loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_workers_spread_over_the_hosts_of_the_url():
    rotated = _load_scale().rotated
    url = 'amqp://u:p@a:1,u:p@b:2,u:p@c:3/vh'
    assert rotated(url, 0) == url
    assert rotated(url, 1) == 'amqp://u:p@b:2,u:p@c:3,u:p@a:1/vh'
    assert rotated(url, 5) == 'amqp://u:p@c:3,u:p@a:1,u:p@b:2/vh'
    assert rotated('rabbit://h:5672/', 3) == 'rabbit://h:5672/'
