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

"""tools/bus-check --peer-product: which daemon answers on a port."""

import os
import socket
import subprocess
import sys

import pytest

BUS_CHECK = os.path.join(os.path.dirname(__file__), '..', '..', 'tools',
                         'bus-check')
PASSWORD = 'peer-secret'


def peer_product(url, *expect):
    """Run bus-check --peer-product; return (exit status, stdout, stderr)."""
    argv = [sys.executable, BUS_CHECK, '--timeout', '10',
            '--peer-product', url]
    for name in expect:
        argv += ['--expect', name]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def url_with_user(peer, password=PASSWORD):
    return 'amqp://stackrabbit:%s@%s:%d/' % (password, peer.host, peer.port)


@pytest.mark.parametrize('kind,product', [
    ('router', 'qpid-dispatch-router'), ('broker', 'qpid-cpp'),
    ('broker', 'RabbitMQ')])
def test_prints_the_product_of_the_open_frame(make_peer, kind, product):
    peer = make_peer(kind, product=product, version='9.8.7',
                     users={'stackrabbit': PASSWORD})
    status, out, err = peer_product(url_with_user(peer), product)
    assert status == 0, err
    assert out == '%s 9.8.7\n' % product


def test_another_product_fails_naming_both(make_peer):
    peer = make_peer('broker', product='RabbitMQ', version='3.10.8',
                     users={'stackrabbit': PASSWORD})
    status, out, err = peer_product(url_with_user(peer), 'qpid-cpp')
    assert status == 1
    assert out == 'RabbitMQ 3.10.8\n'
    assert "answers as 'RabbitMQ' 3.10.8, not as 'qpid-cpp'" in err
    # the password stays out of the report
    assert PASSWORD not in err


def test_wrong_password_fails_without_a_product(make_peer):
    peer = make_peer('router', users={'stackrabbit': PASSWORD})
    status, out, err = peer_product(url_with_user(peer, 'wrong'),
                                    'qpid-dispatch-router')
    assert status == 1
    assert out == ''
    assert 'no AMQP 1.0 connection' in err


def test_nothing_listening_fails():
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()
    status, out, err = peer_product('amqp://127.0.0.1:%d/' % port)
    assert status == 1
    assert 'no AMQP 1.0 connection' in err


def test_the_url_can_come_on_stdin(make_peer):
    """'-' reads the URL from stdin: no password on the command line."""
    peer = make_peer('broker', product='qpid-cpp', version='1.39.0',
                     users={'stackrabbit': PASSWORD})
    done = subprocess.run(
        [sys.executable, BUS_CHECK, '--timeout', '10', '--peer-product', '-',
         '--expect', 'qpid-cpp'], input=url_with_user(peer) + '\n',
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == 'qpid-cpp 1.39.0\n'
