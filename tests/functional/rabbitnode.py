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

"""Throwaway RabbitMQ nodes for the fault tests: the tests kill them.

A node runs the machine's own RabbitMQ (the Debian package's server script,
or ``AMQP1_TEST_RABBITMQ_SERVER``) as this user, with its own node name,
ports, data and log directories under a temporary directory, and AMQP 1.0
enabled (the ``rabbitmq_amqp1_0`` plugin on 3.x; built in on 4.x).  The
host's RabbitMQ is never touched.  With ``root``, the node runs the
RabbitMQ installed in that chroot instead (``../shared/tools/
rabbitmq4-chroot`` builds one with RabbitMQ 4 on a Debian 12 host), its
files in a directory inside the chroot.  ``kill()`` is a SIGKILL of the whole
node; ``start()`` again brings it back on the same data, as after a crash.
"""

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

SERVER_CANDIDATES = ('/usr/lib/rabbitmq/bin/rabbitmq-server',
                     '/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/'
                     'rabbitmq-server')
START_TIMEOUT = 90.0


def find_server(root=None):
    """The rabbitmq-server script to run (a path inside root), or None."""
    explicit = os.environ.get('AMQP1_TEST_RABBITMQ_SERVER')
    if explicit and root is None:
        return explicit if os.access(explicit, os.X_OK) else None
    for pattern in SERVER_CANDIDATES:
        for path in sorted(glob.glob((root or '') + pattern)):
            if os.access(path, os.X_OK):
                return path[len(root or ''):]
    return None


def _has_amqp1_plugin(server, root=None):
    root = root or ''
    base = os.path.dirname(os.path.dirname(os.path.realpath(root + server)))
    return bool(glob.glob(os.path.join(base, 'plugins', 'rabbitmq_amqp1_0*'))
                or glob.glob(root + '/usr/lib/rabbitmq/lib/rabbitmq_server-*/'
                             'plugins/rabbitmq_amqp1_0*'))


def port_open(port, host='127.0.0.1', netns=None) -> bool:
    """Whether something accepts TCP connections on host:port (in netns)."""
    if netns:
        probe = subprocess.run(
            ['ip', 'netns', 'exec', netns, 'bash', '-c',
             'exec 3<>"/dev/tcp/$0/$1"', host, str(port)],
            capture_output=True, timeout=10)
        return probe.returncode == 0
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _group(pgid):
    """The pids of process group pgid."""
    pids = []
    for entry in os.listdir('/proc'):
        try:
            with open('/proc/%s/stat' % entry) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _alive(pid) -> bool:
    """Whether pid runs (a zombie does not)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


class NodeExited(RuntimeError):
    """A node's server script ended before the node listened."""


class RabbitNode:
    """One RabbitMQ node on port (AMQP 0-9-1 and 1.0) and port + 1.

    config: more rabbitmq.conf lines; plugins: more plugins to enable;
    netns: a network namespace to run in, listening on host there;
    cookie: the Erlang cookie (nodes of one cluster share it);
    root: a chroot holding the RabbitMQ to run (server is a path in it,
    base_dir must be inside it).
    """

    def __init__(self, server, base_dir, name, port, user='guest',
                 password='guest', config='', plugins=(), netns=None,
                 host='127.0.0.1', cookie=None, root=None) -> None:
        self.server = server
        self.root = root
        self.user = user
        self.password = password
        self.dir = os.path.join(base_dir, name)
        self.name = name
        self.port = port
        self.netns = netns
        self.host = host
        self.proc = None
        os.makedirs(self.dir, exist_ok=True)
        if cookie:
            path = os.path.join(self.dir, '.erlang.cookie')
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                              0o400), 'w') as f:
                f.write(cookie)
        with open(os.path.join(self.dir, 'rabbitmq.conf'), 'w') as f:
            f.write('listeners.tcp.default = %s:%d\n'
                    'loopback_users = none\n'
                    'default_user = %s\ndefault_pass = %s\n%s'
                    % (host, port, user, password, config))
        plugins = list(plugins)
        if _has_amqp1_plugin(server, root):
            plugins.append('rabbitmq_amqp1_0')
        with open(os.path.join(self.dir, 'enabled_plugins'), 'w') as f:
            f.write('[%s].\n' % ','.join(plugins))

    @property
    def node_name(self) -> str:
        """The Erlang node name (name@localhost)."""
        return '%s@localhost' % self.name

    def join(self, other) -> None:
        """Join other's cluster (this node stops its app meanwhile)."""
        self.ctl('stop_app')
        self.ctl('join_cluster', other.node_name)
        self.ctl('start_app')

    @property
    def url(self) -> str:
        """The node's amqp:// URL with its user and password."""
        return 'amqp://%s:%s@%s:%d/' % (
            urllib.parse.quote(self.user, safe=''),
            urllib.parse.quote(self.password, safe=''), self.host, self.port)

    def _argv(self, argv):
        """argv run in the node's network namespace and chroot, if any."""
        if self.root:
            argv = ['chroot', self.root] + argv
        if self.netns:
            return ['ip', 'netns', 'exec', self.netns] + argv
        return argv

    def _env(self):
        env = dict(os.environ)
        d = self.dir
        if self.root:
            # the node sees its files from inside the chroot
            d = d[len(self.root):]
            env.update(PATH='/usr/sbin:/usr/bin:/sbin:/bin',
                       LANG='C.UTF-8', LC_ALL='C.UTF-8')
        env.update(
            HOME=d, RABBITMQ_NODENAME='%s@localhost' % self.name,
            RABBITMQ_DIST_PORT=str(self.port + 1),
            RABBITMQ_MNESIA_BASE=os.path.join(d, 'mnesia'),
            RABBITMQ_LOG_BASE=os.path.join(d, 'log'),
            RABBITMQ_PID_FILE=os.path.join(d, 'pid'),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(d, 'enabled_plugins'),
            RABBITMQ_PLUGINS_EXPAND_DIR=os.path.join(d, 'plugins-expand'),
            RABBITMQ_CONFIG_FILE=os.path.join(d, 'rabbitmq'))
        return env

    def start(self) -> float:
        """Start (or restart) the node; seconds until it accepted TCP."""
        assert self.proc is None, 'node %s is running' % self.name
        start = time.monotonic()
        log = open(os.path.join(self.dir, 'console.log'), 'ab')
        self.proc = subprocess.Popen(
            self._argv([self.server]), env=self._env(), cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        while time.monotonic() - start < START_TIMEOUT:
            if self.proc.poll() is not None:
                self.proc = None
                raise NodeExited('RabbitMQ node %s exited: see %s; its '
                                 'console said:\n%s' % (
                                     self.name, self.dir, self._console()))
            if port_open(self.port, self.host, self.netns):
                return time.monotonic() - start
            time.sleep(0.1 if self.netns is None else 0.5)
        self.kill()
        raise RuntimeError('RabbitMQ node %s did not listen on %d within '
                           '%ss: see %s' % (self.name, self.port,
                                            START_TIMEOUT, self.dir))

    def _console(self, lines: int = 15) -> str:
        """The last lines of the node's console.log."""
        try:
            with open(os.path.join(self.dir, 'console.log'), 'rb') as f:
                text = f.read().decode('utf-8', 'replace')
        except OSError as exc:
            return str(exc)
        return '\n'.join(text.rstrip().splitlines()[-lines:])

    def ctl(self, *args) -> str:
        """rabbitmqctl on this node (the script beside the server's)."""
        ctl = os.path.join(os.path.dirname(self.server), 'rabbitmqctl')
        env = self._env()
        out = subprocess.run(
            self._argv([ctl, '-n', env['RABBITMQ_NODENAME']] + list(args)),
            env=env, capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise RuntimeError('rabbitmqctl %s: %s' % (
                ' '.join(args), out.stderr[-500:]))
        return out.stdout

    def kill(self) -> None:
        """SIGKILL the node (its whole process group), as in a crash."""
        if self.proc is None:
            return
        group = _group(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None
        # the Erlang VM is a child of the script: gone only once it is dead
        deadline = time.monotonic() + 30
        while (any(_alive(pid) for pid in group)
               or port_open(self.port, self.host, self.netns)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)

    def remove(self) -> None:
        """Kill the node and delete its files."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv=None) -> int:
    """A throwaway cluster until SIGINT or SIGTERM (tools/scale by hand)."""
    parser = argparse.ArgumentParser(
        prog='python3 -m tests.functional.rabbitnode',
        description='Start clustered throwaway RabbitMQ nodes, print the '
                    'amqp:// URL naming them all, remove them on SIGINT or '
                    'SIGTERM.')
    parser.add_argument('--nodes', type=int, default=3)
    parser.add_argument('--root', help='a chroot holding the RabbitMQ to '
                        'run, e.g. /var/tmp/rabbitmq4-chroot')
    parser.add_argument('--port', type=int, default=36100,
                        help='the first node\'s port (each takes 2)')
    args = parser.parse_args(argv)
    server = find_server(args.root)
    if server is None:
        parser.error('no rabbitmq-server script found')
    base = tempfile.mkdtemp(prefix='rmq', dir=os.path.join(
        args.root, 'tmp') if args.root else None)
    cookie = uuid.uuid4().hex.upper()
    nodes = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for i in range(args.nodes):
            port = args.port + 2 * i
            nodes.append(RabbitNode(server, base, 'amqp1c%d' % port, port,
                                    cookie=cookie, root=args.root))
            nodes[-1].start()
        for node in nodes[1:]:
            node.join(nodes[0])
        sys.stdout.write('amqp://%s/\n' % ','.join(
            'guest:guest@127.0.0.1:%d' % node.port for node in nodes))
        sys.stdout.flush()
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for node in nodes:
            node.remove()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
