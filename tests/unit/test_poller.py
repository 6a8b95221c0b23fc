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

"""The green loop's poller (poller.HubPoller), in its own interpreter."""

from tests.unit import helpers


def test_hub_poller():
    result = helpers.run_module('tests.unit.poller_client')
    assert result['idle'][:2] == [0, 0] and result['idle'][2] >= 0.09
    assert result['ready'] == [True, True, True]
    assert result['drained'] == [0, 0]
    assert result['woken_by_data'] == [True, True]
    assert result['woken_by_wake'] == [0, True]
    # a wake-up is spent by the park it was for
    assert result['after_wake'] == [0, True]
    # a socket forgotten before it closed: its number's next socket is
    # watched (a kept registration would never report it)
    assert result['reused_number'] == [True, True, True]
    assert result['hangup'] == [True, True]
    assert result['unwatched'] == [0, True]
