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

"""Helpers shared by the driver's unit tests."""

import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def run_module(module, timeout=30):
    """Run a test module in a fresh interpreter; its last line as JSON.

    For what cannot be undone in this process (monkey-patching).
    """
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
    proc = subprocess.run(
        [sys.executable, '-m', module], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def url_of(peer, vhost=''):
    """The transport URL of a peer."""
    return 'amqp://%s:%d/%s' % (peer.host, peer.port, vhost)


class Echo(object):
    """An RPC endpoint that records what it was called with."""

    def __init__(self, delay=0.0):
        self.calls = []
        self.delay = delay
        self.lock = threading.Lock()
        self.event = threading.Event()

    def echo(self, ctxt, value):
        with self.lock:
            self.calls.append(value)
        self.event.set()
        if self.delay:
            time.sleep(self.delay)
        return value

    def fail(self, ctxt, value):
        raise ValueError('failing on purpose: %s' % value)


class NotifyEndpoint(object):
    """A notification endpoint that records info notifications."""

    def __init__(self):
        self.seen = []
        self.event = threading.Event()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.seen.append((publisher_id, event_type, payload))
        self.event.set()


def receivers(peer, address=None):
    """Addresses (or count for one address) of the peer's receiver links."""
    found = [addr for role, addr, _n, _c in peer.links()
             if role == 'receiver']
    if address is None:
        return found
    return found.count(address)


def wait_receivers(peer, *addresses, timeout=5.0):
    """Wait until the peer has a receiver link on each address."""
    assert peer.wait_for(
        lambda: all(receivers(peer, a) for a in addresses), timeout), (
        'missing receivers: %s' % [a for a in addresses
                                   if not receivers(peer, a)])


def received_on(peer, address):
    """(message, presettled) pairs the peer received for address."""
    return [(m, s) for a, m, s in list(peer.received) if a == address]
