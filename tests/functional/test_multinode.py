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

"""A two-host DevStack on one machine: a subnode uses the controller's bus.

Two network namespaces joined by a veth pair stand for the controller and
a compute host. The controller's namespace runs a RabbitMQ node (the bus,
as DevStack's rabbit service would, with DevStack's user). In the compute
namespace the plugin runs (tools/amqp1-standalone) with the variables
DevStack's multinode jobs give a subnode (HOST_IP, SERVICE_HOST,
RABBIT_HOST, no rabbit service): it must take the client role, start no
daemon, write URLs that point at the controller and pass the bus check
from there. Needs root (ip netns) and a RabbitMQ installation.
"""

import os
import random
import subprocess
import sys
import uuid

import pytest

from tests.functional import rabbitnode

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _netns_usable():
    if os.geteuid() != 0:
        return 'not root: ip netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN'
    name = 'amqp1-probe-%d' % os.getpid()
    if subprocess.run(['ip', 'netns', 'add', name],
                      capture_output=True).returncode:
        return 'ip netns add is not allowed here'
    subprocess.run(['ip', 'netns', 'del', name], capture_output=True)
    return None


def _ip(*args):
    subprocess.run(['ip'] + list(args), check=True, capture_output=True,
                   timeout=30)


def _kill_namespace(name):
    """Kill what still runs in namespace name (epmd, say), then drop it."""
    pids = subprocess.run(['ip', 'netns', 'pids', name],
                          capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(['ip', 'netns', 'del', name], capture_output=True)


@pytest.fixture
def hosts():
    """(controller netns, its address, compute netns, its address)."""
    reason = _netns_usable()
    if reason:
        pytest.skip(reason)
    tag = '%04x' % random.randrange(0x10000)
    net = '10.254.%d' % random.randrange(1, 250)
    ctl, cpu = 'amqp1-ctl-' + tag, 'amqp1-cpu-' + tag
    for name in (ctl, cpu):
        _ip('netns', 'add', name)
    try:
        _ip('link', 'add', 'a1c' + tag, 'netns', ctl, 'type', 'veth',
            'peer', 'name', 'a1p' + tag, 'netns', cpu)
        for name, dev, addr in ((ctl, 'a1c' + tag, net + '.1'),
                                (cpu, 'a1p' + tag, net + '.2')):
            _ip('-n', name, 'link', 'set', 'lo', 'up')
            _ip('-n', name, 'addr', 'add', addr + '/24', 'dev', dev)
            _ip('-n', name, 'link', 'set', dev, 'up')
        yield ctl, net + '.1', cpu, net + '.2'
    finally:
        for name in (ctl, cpu):
            _kill_namespace(name)


@pytest.fixture
def controller_bus(hosts, tmp_path):
    """A RabbitMQ node in the controller's namespace: DevStack's bus."""
    server = rabbitnode.find_server()
    if server is None:
        pytest.skip('no RabbitMQ installation (rabbitmq-server)')
    ctl, ctl_ip = hosts[0], hosts[1]
    password = uuid.uuid4().hex
    node = rabbitnode.RabbitNode(
        server, str(tmp_path), 'mnctl', 5672, user='stackrabbit',
        password=password, netns=ctl, host=ctl_ip)
    node.start()
    try:
        yield node
    finally:
        node.remove()


@pytest.fixture
def compute_python(tmp_path):
    """A venv over this machine's packages: the compute host's Python."""
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages',
                    '--without-pip', str(venv)], check=True, timeout=120)
    return str(venv / 'bin' / 'python')


def run_subnode_plugin(hosts, node, state_dir, python, *env):
    """tools/amqp1-standalone rabbit in the compute namespace."""
    ctl_ip, cpu, cpu_ip = hosts[1], hosts[2], hosts[3]
    variables = [
        'HOST_IP=%s' % cpu_ip, 'SERVICE_HOST=%s' % ctl_ip,
        'RABBIT_HOST=%s' % ctl_ip, 'RABBIT_USERID=stackrabbit',
        'RABBIT_PASSWORD=%s' % node.password,
        'ENABLED_SERVICES=n-cpu,placement-client',
        'AMQP1_STANDALONE_DIR=%s' % state_dir, 'AMQP1_PYTHON=%s' % python,
        # the compute namespace reaches nothing but the controller: the
        # driver installs with what this machine has
        'PIP_NO_INDEX=1', 'PIP_NO_BUILD_ISOLATION=false'] + list(env)
    return subprocess.run(
        ['ip', 'netns', 'exec', cpu, 'env'] + variables +
        ['bash', os.path.join(REPO_DIR, 'tools', 'amqp1-standalone'),
         'rabbit'],
        capture_output=True, text=True, timeout=600)


def test_subnode_uses_the_controllers_bus(hosts, controller_bus, tmp_path,
                                          compute_python):
    ctl_ip, cpu = hosts[1], hosts[2]
    state = tmp_path / 'compute'
    out = run_subnode_plugin(hosts, controller_bus, str(state),
                             compute_python)
    log = (state / 'logs' / 'standalone.log')
    assert out.returncode == 0, (out.stderr[-3000:]
                                 + (log.read_text()[-3000:]
                                    if log.exists() else ''))
    # the client role, derived from HOST_IP and SERVICE_HOST
    assert 'amqp1: mode rabbit (client); RPC amqp://stackrabbit:***@%s:5672/' \
        % ctl_ip in out.stderr
    assert 'bus-check: INFO bus-check: all checks passed' in out.stderr
    conf = (state / 'data' / 'amqp1' / 'bus-check.conf').read_text()
    assert ('transport_url = amqp://stackrabbit:%s@%s:5672/'
            % (controller_bus.password, ctl_ip)) in conf
    # nothing of the bus runs on the compute host
    assert not rabbitnode.port_open(5672, '127.0.0.1', cpu)
    assert not (state / 'run').exists() or not os.listdir(state / 'run')


def test_subnode_bus_check_fails_when_the_controller_is_down(
        hosts, controller_bus, tmp_path, compute_python):
    controller_bus.kill()
    out = run_subnode_plugin(hosts, controller_bus, str(tmp_path / 'c'),
                             compute_python, 'AMQP1_BUS_CHECK_TIMEOUT=15')
    assert out.returncode != 0
    assert 'the bus check failed' in out.stderr
    assert 'AMQP1_BUS_CHECK=False' in out.stderr
