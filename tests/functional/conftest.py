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

"""Real qdrouterd and qpidd for the functional tests.

The binaries come from the environment: ``AMQP1_TEST_QDROUTERD`` and
``AMQP1_TEST_QPIDD`` (paths); tests that need one skip when it is unset or
not executable.  Each daemon runs from a temporary directory on a free
local port with the configuration the DevStack plugin writes: the files
are rendered from the plugin's own templates in ``devstack/files`` with the
values ``devstack/lib/qdrouterd`` and ``devstack/lib/qpidd`` pass, so a
passing test also proves that the plugin's configuration works with the
real daemon.

Fixtures:

* ``qdrouterd`` / ``qpidd``: one daemon per test module (anonymous);
* ``daemons``: a factory for daemons of one test, e.g. with SASL users or
  to kill and restart (``daemons.qdrouterd(users={'u': 'p'})``).
"""

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from tests.functional import rabbitnode

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(HERE)), 'devstack',
                         'files')
LOCALHOST = '127.0.0.1'
# held by RabbitMQ (and its CLI tools) on the test hosts
AVOID_PORTS = {5672, 5674, 15672, 25672, 25673, 25674} | set(
    range(35672, 35683))
START_TIMEOUT = 15.0
# a throwaway RabbitMQ node that exits at its first start: tries on new ports
START_ATTEMPTS = 2


def render(template: str, **values) -> str:
    """devstack/lib/amqp1's amqp1_render: replace @KEY@, miss none."""
    with open(os.path.join(TEMPLATES, template)) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace('@%s@' % key, str(value))
    left = re.search(r'@[A-Z_]+@', text)
    if left:
        raise AssertionError('%s: %s was not replaced' %
                             (template, left.group(0)))
    return text


def free_port() -> int:
    """A TCP port free on every local address, away from RabbitMQ's."""
    while True:
        sock = socket.socket()
        try:
            sock.bind(('', 0))
            port = sock.getsockname()[1]
        finally:
            sock.close()
        if port not in AVOID_PORTS:
            return port


def _accepting(port: int) -> bool:
    return rabbitnode.port_open(port, LOCALHOST)


class Daemon(object):
    """One daemon process on a fixed port, restartable."""

    name = None

    def __init__(self, binary, workdir, users=None, tls=None):
        self.binary = binary
        self.workdir = workdir
        self.users = dict(users or {})
        # tls: a tlsfiles.make_pki directory; the listener requires TLS
        self.tls = tls
        self.port = free_port()
        self.proc = None
        self.output = os.path.join(workdir, '%s.out' % self.name)
        self.log_file = os.path.join(workdir, '%s.log' % self.name)
        self.sasl_dir = os.path.join(workdir, 'sasl2')
        os.makedirs(self.sasl_dir, exist_ok=True)
        self.configure()

    def configure(self):
        raise NotImplementedError

    def command(self) -> list:
        raise NotImplementedError

    def url(self, user=None, password=None) -> str:
        if user is None and self.users:
            user, password = next(iter(self.users.items()))
        cred = '%s:%s@' % (user, password) if user else ''
        # with TLS the name the test CA's certificate carries
        host = 'localhost' if self.tls else LOCALHOST
        return 'amqp://%s%s:%d/' % (cred, host, self.port)

    def _write(self, path, text):
        with open(path, 'w') as f:
            f.write(text)
        return path

    def _saslpasswd(self, sasldb, realm=None):
        for user, password in self.users.items():
            cmd = ['saslpasswd2', '-c', '-p', '-f', sasldb]
            if realm:
                cmd += ['-u', realm]
            subprocess.run(cmd + [user], input=password.encode(),
                           check=True)

    def start(self):
        """Start and wait until the port accepts connections."""
        out = open(self.output, 'ab')
        self.proc = subprocess.Popen(self.command(), stdout=out,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     cwd=self.workdir,
                                     start_new_session=True)
        out.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepting(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError('%s exited with %s:\n%s' %
                                   (self.name, self.proc.returncode,
                                    self.log_tail()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError('%s did not listen on %d within %ss:\n%s'
                                   % (self.name, self.port, START_TIMEOUT,
                                      self.log_tail()))
            time.sleep(0.05)
        return self

    def stop(self, sig=signal.SIGTERM):
        """Stop the daemon (SIGKILL: as if it crashed)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self):
        self.stop(signal.SIGKILL)

    def restart(self):
        self.stop()
        return self.start()

    def log_tail(self, lines=30) -> str:
        text = []
        for path in (self.output, self.log_file):
            if os.path.exists(path):
                with open(path, errors='replace') as f:
                    text.append('== %s\n%s' % (
                        path, ''.join(f.readlines()[-lines:])))
        return '\n'.join(text)

    def __repr__(self):
        return '<%s on port %s>' % (self.name, self.port)


class Qdrouterd(Daemon):
    """qdrouterd with devstack/lib/qdrouterd's configuration."""

    name = 'qdrouterd'

    def configure(self):
        # as amqp1_router_sasl and configure_amqp1_router write them
        sasldb = os.path.join(self.sasl_dir, 'router.sasldb')
        mechs = 'PLAIN' if self.users else 'ANONYMOUS'
        # the router's realm is the host name, saslpasswd2's default
        self._saslpasswd(sasldb)
        self._write(os.path.join(self.sasl_dir, 'amqp1-router.conf'),
                    render('amqp1-sasl2.conf.in', DAEMON='qdrouterd',
                           SASLDB=sasldb, MECHS=mechs))
        # as configure_amqp1_router writes it with AMQP1_SSL=True
        tls = {'LISTENER_SSL_PROFILE': '', 'LISTENER_REQUIRE_SSL': ''}
        text = ''
        if self.tls:
            tls = {'LISTENER_SSL_PROFILE': 'sslProfile: amqp1-tls',
                   'LISTENER_REQUIRE_SSL': 'requireSsl: yes'}
            text = render('amqp1-router-tls.conf.in',
                          CERT_FILE=os.path.join(self.tls, 'server.pem'),
                          KEY_FILE=os.path.join(self.tls, 'server.key'),
                          CA_FILE=os.path.join(self.tls, 'ca.pem'))
        self.conf = self._write(
            os.path.join(self.workdir, 'qdrouterd.conf'),
            render('amqp1-router.conf.in', ROUTER='qdrouterd',
                   ROUTER_ID='functional-%d' % self.port,
                   ROUTER_MODE='standalone', WORKER_THREADS=2,
                   SASL_DIR=self.sasl_dir, SASL_NAME='amqp1-router',
                   LISTEN_HOST=LOCALHOST, PORT=self.port,
                   AUTHENTICATE='yes' if self.users else 'no',
                   SASL_MECHANISMS=mechs, LOG_FILE=self.log_file, **tls)
            + text)

    def command(self):
        return [self.binary, '-c', self.conf]


class Qpidd(Daemon):
    """qpidd with devstack/lib/qpidd's configuration."""

    name = 'qpidd'
    realm = 'QPID'

    def configure(self):
        sasldb = os.path.join(self.sasl_dir, 'qpidd.sasldb')
        data_dir = os.path.join(self.workdir, 'data')
        os.makedirs(data_dir, exist_ok=True)
        self._saslpasswd(sasldb, self.realm)
        self._write(os.path.join(self.sasl_dir, 'qpidd.conf'),
                    render('amqp1-sasl2.conf.in', DAEMON='qpidd',
                           SASLDB=sasldb,
                           MECHS='PLAIN' if self.users else 'ANONYMOUS'))
        self.conf = self._write(
            os.path.join(self.workdir, 'qpidd.conf'),
            render('qpidd.conf.in', PORT=self.port, LISTEN_HOST='127.0.0.1',
                   DATA_DIR=data_dir,
                   AUTH='yes' if self.users else 'no', REALM=self.realm,
                   SASL_DIR=self.sasl_dir, LOG_FILE=self.log_file))

    def command(self):
        # qpidd's own -c is --check: the configuration needs --config
        return [self.binary, '--config', self.conf]


def daemon_binary(kind: str) -> str:
    """The binary named by AMQP1_TEST_<KIND>, or skip the test."""
    var = 'AMQP1_TEST_%s' % kind.upper()
    path = os.environ.get(var)
    if not path:
        pytest.skip('%s is not set: no real %s to test against (set it to '
                    'the path of the %s binary)' % (var, kind, kind))
    path = shutil.which(path) or path
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.skip('%s=%s is not an executable file' % (var, path))
    return path


_CLASSES = {'qdrouterd': Qdrouterd, 'qpidd': Qpidd}


class DaemonFactory(object):
    """Starts daemons for one scope and stops them all at its end."""

    def __init__(self, tmp_factory):
        self._tmp = tmp_factory
        self.started = []

    def binary(self, kind) -> str:
        """The binary of kind, or skip."""
        return daemon_binary(kind)

    def start(self, kind, users=None, tls=None) -> Daemon:
        binary = daemon_binary(kind)
        workdir = str(self._tmp.mktemp(kind))
        daemon = _CLASSES[kind](binary, workdir, users, tls)
        self.started.append(daemon)
        return daemon.start()

    def qdrouterd(self, users=None, tls=None) -> Daemon:
        return self.start('qdrouterd', users, tls)

    def qpidd(self, users=None) -> Daemon:
        return self.start('qpidd', users)

    def stop_all(self):
        for daemon in self.started:
            daemon.stop()


@pytest.fixture
def daemons(tmp_path_factory):
    """Daemons for this test only: daemons.qdrouterd(users=...)."""
    factory = DaemonFactory(tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture(scope='module')
def module_daemons(tmp_path_factory):
    factory = DaemonFactory(tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture(scope='module')
def qdrouterd(module_daemons):
    """A qdrouterd (anonymous) shared by the tests of a module."""
    return module_daemons.qdrouterd()


@pytest.fixture(scope='module')
def qpidd(module_daemons):
    """A qpidd (anonymous) shared by the tests of a module."""
    return module_daemons.qpidd()


class RabbitNodes(object):
    """Throwaway RabbitMQ nodes of one test (see rabbitnode.py).

    root: run the RabbitMQ of that chroot instead of the host's.
    """

    def __init__(self, tmp_path_factory, root=None):
        self.root = root
        self.server = rabbitnode.find_server(root)
        if self.server is None:
            pytest.skip('no rabbitmq-server script%s (install '
                        'rabbitmq-server or set AMQP1_TEST_RABBITMQ_SERVER)'
                        % (' in %s' % root if root else ''))
        # short: Erlang limits the length of a node's socket paths
        if root:
            self._base = tempfile.mkdtemp(prefix='rmq',
                                          dir=os.path.join(root, 'tmp'))
        else:
            self._base = str(tmp_path_factory.mktemp('rmq'))
        self._nodes = []

    def node(self, **options):
        """A new node, started; its port and port + 1 are free.

        options: user and password of its only user (guest/guest),
        config (rabbitmq.conf lines), plugins (more to enable).
        """
        for attempt in range(START_ATTEMPTS):
            while True:
                port = free_port()
                if port + 1 not in AVOID_PORTS and not _accepting(port + 1):
                    break
            node = rabbitnode.RabbitNode(
                self.server, self._base, 'amqp1t%d' % port, port,
                root=self.root, **options)
            self._nodes.append(node)
            try:
                node.start()
                return node
            except rabbitnode.NodeExited as exc:
                # e.g. another process took the port or port + 1 since
                # free_port() found them free
                if attempt + 1 == START_ATTEMPTS:
                    raise
                logging.getLogger(__name__).warning(
                    'starting again on new ports: %s', exc)

    def cluster(self, size=3, **options) -> list:
        """size nodes started with one cookie, joined to the first."""
        cookie = uuid.uuid4().hex.upper()
        nodes = [self.node(cookie=cookie, **options) for _ in range(size)]
        for node in nodes[1:]:
            node.join(nodes[0])
        return nodes

    def remove_all(self):
        for node in self._nodes:
            node.remove()
        if self.root:
            shutil.rmtree(self._base, ignore_errors=True)


@pytest.fixture
def rabbit_nodes(tmp_path_factory):
    """RabbitMQ nodes for this test only: rabbit_nodes.node()."""
    nodes = RabbitNodes(tmp_path_factory)
    yield nodes
    nodes.remove_all()


@pytest.fixture
def report(request):
    """report(figure, value, unit='', limit=''): a figure for the report.

    Figures go, one JSON object a line, to the file that
    ``AMQP1_FAULT_REPORT`` names (``tools/fault-report`` sets it); without
    it they are only logged.
    """
    import json
    import logging
    path = os.environ.get('AMQP1_FAULT_REPORT')

    def add(figure, value, unit='', limit=''):
        row = {'test': request.node.name, 'figure': figure, 'value': value,
               'unit': unit, 'limit': limit}
        logging.getLogger(__name__).info('figure: %s', row)
        if path:
            with open(path, 'a') as f:
                f.write(json.dumps(row) + '\n')
    return add


@pytest.fixture(scope='module')
def module_rabbit_nodes(tmp_path_factory):
    """RabbitMQ nodes shared by the tests of a module."""
    nodes = RabbitNodes(tmp_path_factory)
    yield nodes
    nodes.remove_all()
