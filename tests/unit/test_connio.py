# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The socket side of a connection: SocketPump's reads into proton."""

import select
import socket
import types

from oslo_messaging_amqp1 import connio
from tests.unit import helpers


class _Recorder(object):
    """A socket whose reads are recorded."""

    def __init__(self, sock):
        self.sock = sock
        self.reads = []

    def recv(self, size):
        data = self.sock.recv(size)
        self.reads.append(len(data))
        return data


def test_a_read_larger_than_protons_input_space_loses_nothing():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    failures = []
    try:
        with helpers.ReceiverPair() as pair:
            space = pair.conn.needs_input
            ctl = types.SimpleNamespace(conn=pair.conn,
                                        socket_failed=failures.append)
            pump = connio.SocketPump(ctl)
            recorder = _Recorder(ours)
            pump.sock = types.SimpleNamespace(sock=recorder)

            def feed(data):
                theirs.sendall(data)
                while select.select([ours], [], [], 0)[0]:
                    pump.io_read()
            bodies = [{'n': n, 'pad': 'x' * 3000} for n in range(30)]
            pair.send(bodies)
            pair.pump(feed)
            assert failures == []
            assert max(recorder.reads) > space   # more than one push took
            assert pair.handler.bodies() == bodies
    finally:
        ours.close()
        theirs.close()
