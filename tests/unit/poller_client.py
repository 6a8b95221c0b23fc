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

"""Run by test_poller.py in a fresh interpreter: the green loop's poller.

Monkey-patches first, then drives a HubPoller from a green thread over
socket pairs and prints one JSON line with what it saw.
"""

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from eventlet import patcher  # noqa: E402

from oslo_messaging_amqp1 import poller  # noqa: E402

_socket = patcher.original('socket')


class Conn:
    """What the I/O loop polls: an object with fileno()."""

    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()


def pair():
    a, b = _socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def timed(hub_poller, readers, writers, timeout):
    """(readable, writable, seconds) of one poll."""
    start = time.monotonic()
    r, w = hub_poller.poll(readers, writers, timeout)
    return r, w, time.monotonic() - start


def scenario():
    result = {}
    hub_poller = poller.HubPoller()
    a, b = pair()
    conn = Conn(a)
    # nothing ready: the timeout
    r, w, took = timed(hub_poller, [conn], [], 0.1)
    result['idle'] = [len(r), len(w), round(took, 2)]
    # readable, and writable only when asked for
    b.send(b'x')
    r, w, took = timed(hub_poller, [conn], [conn], 5)
    result['ready'] = [r == [conn], w == [conn], took < 1]
    a.recv(10)
    r, w, took = timed(hub_poller, [conn], [], 0.05)
    result['drained'] = [len(r), len(w)]
    # data sent by another green thread while the loop is parked
    eventlet.spawn_after(0.05, b.send, b'y')
    r, w, took = timed(hub_poller, [conn], [], 5)
    result['woken_by_data'] = [r == [conn], took < 1]
    a.recv(10)
    # wake() from another green thread ends the park, and only it
    eventlet.spawn_after(0.05, hub_poller.wake)
    r, w, took = timed(hub_poller, [conn], [], 5)
    result['woken_by_wake'] = [len(r), took < 1]
    r, w, took = timed(hub_poller, [conn], [], 0.1)
    result['after_wake'] = [len(r), took >= 0.09]
    # the connection's socket goes and a new one takes its number
    old_fd = a.fileno()
    hub_poller.forget(conn)
    a.close()
    b.close()
    a, b = pair()
    while a.fileno() != old_fd and b.fileno() == old_fd:
        a, b = b, a
    conn.sock = a
    b.send(b'z')
    r, w, took = timed(hub_poller, [conn], [], 5)
    result['reused_number'] = [a.fileno() == old_fd, r == [conn], took < 1]
    a.recv(10)
    # the peer hangs up: readable (the read says so)
    b.close()
    r, w, took = timed(hub_poller, [conn], [], 5)
    result['hangup'] = [r == [conn], a.recv(10) == b'']
    # asked for nothing: no busy return for the dead socket
    r, w, took = timed(hub_poller, [], [], 0.1)
    result['unwatched'] = [len(r), took >= 0.09]
    hub_poller.close()
    a.close()
    return result


def main():
    done = eventlet.spawn(scenario)
    sys.stdout.write(json.dumps(done.wait()) + '\n')


if __name__ == '__main__':
    main()
