# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The plugin's RabbitMQ refuses anonymous AMQP 1.0 connections.

A throwaway node lets guest log in from anywhere (loopback_users = none),
so before the plugin's amqp1_rabbitmq_deny_anonymous (devstack/lib/
rabbitmq-amqp1, run by the real bash against the node's rabbitmqctl) an
anonymous connection is accepted as guest; after it, refused, while the
node's user still connects.
"""

import os
import subprocess

from proton import utils as proton_utils

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _connects(port: int, user: str = None, password: str = None) -> bool:
    """True if an AMQP 1.0 connection (ANONYMOUS without a user) opens."""
    if user:
        url = 'amqp://%s:%s@127.0.0.1:%d' % (user, password, port)
        mechs = 'PLAIN'
    else:
        url = 'amqp://127.0.0.1:%d' % port
        mechs = 'ANONYMOUS'
    try:
        conn = proton_utils.BlockingConnection(url, timeout=10,
                                               allowed_mechs=mechs)
    except Exception:
        return False
    conn.close()
    return True


def _deny_anonymous(node) -> None:
    """Run the plugin's amqp1_rabbitmq_deny_anonymous against node."""
    ctl = os.path.join(os.path.dirname(node.server), 'rabbitmqctl')
    env = node._env()
    env.update(AMQP1_TEST_CTL=ctl, AMQP1_TEST_NODE=env['RABBITMQ_NODENAME'])
    script = (
        'set -o errexit\n'
        'function sudo { "$@"; }\n'
        'function rabbitmqctl {\n'
        '    "$AMQP1_TEST_CTL" -n "$AMQP1_TEST_NODE" "$@"\n'
        '}\n'
        'source "%s/devstack/lib/rabbitmq-amqp1"\n'
        'amqp1_rabbitmq_deny_anonymous\n' % REPO)
    subprocess.run(['bash', '-c', script], env=env, check=True, timeout=60)


def test_anonymous_refused_after_the_plugin(rabbit_nodes):
    node = rabbit_nodes.node()
    assert _connects(node.port), 'the node should accept anonymous first'
    _deny_anonymous(node)
    assert not _connects(node.port)
    assert _connects(node.port, node.user, node.password)
