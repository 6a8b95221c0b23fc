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

"""The driver in a monkey-patched (eventlet) process.

Monkey-patching cannot be undone, so eventlet_client.py runs in its own
interpreter.
"""

from tests.unit import helpers


def test_monkey_patched_process():
    result = helpers.run_module('tests.unit.eventlet_client')
    assert result['threading_patched'] is True
    assert result['call'] == 'green'
    assert result['parallel'] == list(range(10))
    assert result['casts'] == [0, 1, 2]
    assert result['notifications'] == [{'x': 1}]
    # one green I/O loop per transport (RPC and notifications), on the
    # hub's OS thread: no native thread for the green callers to cross to
    assert result['io_threads'] == 2
    assert result['native_io_threads'] == 0
    assert result['io_on_the_hub_thread'] is True
    assert result['ctl_thread_name'] == 'amqp1-io'
    assert result['io_threads_after_cleanup'] == 0
    assert result['elapsed'] < 5
    # forked with a fresh hub (as oslo.service's workers) and without: the
    # child calls on a connection of its own; the parent's copy of its
    # green loop stops in the child, so the parent's calls go on (without
    # that, its session broke: "delivery failed" or a timeout, 3 runs in 3)
    for fork in result['fork']:
        assert fork['child'] == 'child' and fork['child_exit'] == 0, fork
        assert fork['during'] is True and fork['after'] is True, fork
        assert fork['after_s'] < 2, fork
    # a host lookup on connect goes through eventlet's resolver, so the hub
    # runs other green threads meanwhile (0.3 s lookup, 10 ms ticks)
    assert result['lookups'] >= 1
    assert result['ticks_during_lookup'] >= 15, result
