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

"""A transport used on both sides of os.fork() (e.g. oslo.service workers).

The child must not touch the parent's connection: its first use opens a
connection of its own; the parent's keeps working.
"""

import json
import os
import select
import time

import pytest

from tests.unit import helpers

TOPIC = 'openstack.org/om/rpc/anycast/nova/compute'


def _read(fd, timeout):
    ready, _w, _x = select.select([fd], [], [], timeout)
    assert ready, 'the child did not answer in %ss' % timeout
    return os.read(fd, 65536)


def _reap(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail('the child did not exit')


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_transport_after_fork(messaging, router):
    transport = messaging.transport(router)
    messaging.server(transport)
    helpers.wait_receivers(router, TOPIC)
    client = messaging.client(transport)
    assert client.call({}, 'echo', value='parent-1') == 'parent-1'
    (parent_conn,) = router.connections()

    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:    # the child: never return into pytest
        code = 1
        try:
            os.close(to_parent_r)
            os.close(to_child_w)
            answer = client.call({}, 'echo', value='child')
            os.write(to_parent_w, json.dumps(
                {'answer': answer, 'pid': os.getpid()}).encode())
            os.read(to_child_r, 1)      # the parent has looked
            transport.cleanup()
            code = 0
        except BaseException as exc:
            os.write(to_parent_w, json.dumps({'error': repr(exc)}).encode())
        finally:
            os._exit(code)

    os.close(to_parent_w)
    os.close(to_child_r)
    try:
        report = json.loads(_read(to_parent_r, 10).decode())
        assert report == {'answer': 'child', 'pid': pid}
        conns = router.connections()
        assert len(conns) == 2
        pids = sorted(c['properties']['pid'] for c in conns)
        assert pids == sorted([os.getpid(), pid])
        assert len(set(c['container_id'] for c in conns)) == 2
        assert parent_conn in conns     # the parent's is untouched
        # the parent still works, on its own connection
        assert client.call({}, 'echo', value='parent-2') == 'parent-2'
    finally:
        os.write(to_child_w, b'x')
        os.close(to_child_w)
        exit_code = _reap(pid, 10)
        os.close(to_parent_r)
    assert exit_code == 0
    assert router.wait_for(lambda: router.connections() == [parent_conn])
    assert client.call({}, 'echo', value='parent-3') == 'parent-3'


def _in_child(work, timeout=10):
    """Run work() in a forked child; its result or error, as JSON."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:    # the child: never return into pytest
        try:
            os.close(read_fd)
            try:
                report = {'result': work()}
            except Exception as exc:
                report = {'error': type(exc).__name__, 'text': str(exc)}
            os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        return json.loads(_read(read_fd, timeout).decode())
    finally:
        os.close(read_fd)
        _reap(pid, timeout)


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_child_first_cast_waits_for_its_outcome(messaging, router):
    """A target the parent cast to is new to the child's connection.

    The child's first cast to it waits for the outcome, so a refusal
    raises there instead of being only logged.
    """
    transport = messaging.transport(router, pre_settled=['rpc-reply'],
                                    send_window=64)
    messaging.server(transport)
    helpers.wait_receivers(router, TOPIC)
    client = messaging.client(transport)
    client.cast({}, 'echo', value='parent')     # proven in the parent
    client.cast({}, 'echo', value='parent')     # windowed
    assert transport._driver.flush(5)
    router.outcome_override = (
        lambda address, message: 'rejected' if address == TOPIC else None)

    def child_cast():
        # connected: only the target decides whether the cast waits
        direct = messaging.client(transport, server='host1')
        assert direct.call({}, 'echo', value='child') == 'child'
        client.cast({}, 'echo', value='child')
        transport._driver.flush(5)
        return 'returned'
    report = _in_child(child_cast)
    assert report.get('error') == 'MessageDeliveryFailure', report
    assert 'rejected' in report['text']
