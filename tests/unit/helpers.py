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
from unittest import mock

import proton
import pyngus

from oslo_messaging_amqp1 import codec
from oslo_messaging_amqp1 import pyngus_compat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def count_wakes(loop):
    """Count the wake-up bytes an I/O loop is sent from now on."""
    wakes = []
    wake = loop._wake

    def counted_wake():
        wakes.append(1)
        wake()
    loop._wake = counted_wake
    return wakes


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


class Received(pyngus.ReceiverEventHandler):
    """A pyngus receiver's handler that keeps (message, handle) pairs."""

    def __init__(self):
        self.received = []

    def message_received(self, link, message, handle):
        self.received.append((message, handle))

    def bodies(self):
        """The decoded requests, in the order they came."""
        return [codec.decode_request(m)[1] for m, _ in self.received]


class _EnginePair(object):
    """A pyngus connection and a proton peer, joined in memory.

    No sockets: ``pump()`` moves the bytes between the two (``feed``
    replaces how they reach pyngus). ``filtered`` puts the driver's
    EventFilter on pyngus's connection.
    """

    def __init__(self, name, filtered):
        self.container = pyngus.Container(name)
        self.conn = self.container.create_connection(name)
        self.peer = proton.Connection()
        self.transport = proton.Transport(proton.Transport.SERVER)
        self.transport.bind(self.peer)
        if filtered:
            pyngus_compat.filter_events(self.conn)
        self.conn.open()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.conn.destroy()
        self.container.destroy()

    def _attach(self, credit=0):
        """Open self.link and the peer's end of it; the peer's link."""
        self.link.open()
        self.peer.open()
        self.pump()
        self.peer.session_head(proton.Endpoint.LOCAL_UNINIT).open()
        peer_link = self.peer.link_head(proton.Endpoint.LOCAL_UNINIT)
        peer_link.open()
        if credit:
            peer_link.flow(credit)
        self.pump()
        return peer_link

    def pump(self, feed=None):
        """Move bytes both ways until neither side has any to give."""
        feed = feed or self.conn.process_input
        for _ in range(1000):
            self.conn.process(0)
            moved = False
            out = self.conn.output_data()
            if out:
                self.transport.push(out)
                self.conn.output_written(len(out))
                moved = True
            pending = self.transport.pending()
            if pending > 0:
                feed(self.transport.peek(pending))
                self.transport.pop(pending)
                moved = True
            if not moved:
                break
        self.conn.process(0)


class ReceiverPair(_EnginePair):
    """A pyngus receiver as the driver sets it up, fed by a proton sender."""

    def __init__(self, filtered=True):
        super().__init__('receiver-pair', filtered)
        self.handler = Received()
        self.link = self.conn.create_receiver('q', 'q', self.handler, 'rx')
        pyngus_compat.decode_in_python(self.link)
        self.link.add_capacity(1000)
        self.sender = self._attach()

    def send(self, bodies):
        """Queue one request per body at the sender; its deliveries."""
        sent = []
        for n, body in enumerate(bodies):
            sent.append(self.sender.delivery(b'm%d' % n))
            self.sender.send(codec.encode_request({}, body).encode())
            self.sender.advance()
        return sent


class SenderPair(_EnginePair):
    """A pyngus sender as the driver sets it up, read by a proton receiver.

    Filtered, pyngus_compat.send writes on proton's C objects; else it
    goes through pyngus's own send. ``credit`` is what the receiver
    grants at first.
    """

    def __init__(self, filtered=True, credit=10):
        super().__init__('sender-pair', filtered)
        self.handler = mock.Mock()
        self.link = self.conn.create_sender('q', 'q', self.handler, 'tx')
        self.receiver = self._attach(credit)

    def arrived(self):
        """The receiver's new deliveries: (delivery, body, settled)."""
        got = []
        while self.receiver.current is not None:
            delivery = self.receiver.current
            data = self.receiver.recv(delivery.pending)
            got.append((delivery, codec.decode_request(
                codec.decode_message(data))[1], delivery.settled))
            self.receiver.advance()
        return got
