# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Target -> AMQP address, for each kind of intermediary.

* legacy: qpidd-style brokers (``unicast.nova.compute``);
* routable: qdrouterd / skupper-router
  (``openstack.org/om/rpc/anycast/nova/compute``);
* rabbitmq: RabbitMQ 3.x (plugin, "v1" addresses) and 4.x (native, "v2"
  addresses). RabbitMQ only routes to queues and exchanges that exist, so
  its routes also name the topology to declare first.
"""

import collections
import urllib.parse
import uuid

LEGACY = 'legacy'
ROUTABLE = 'routable'
RABBITMQ = 'rabbitmq'

# a RabbitMQ exchange that exists in every virtual host of 3.x and 4.x
TOPIC_EXCHANGE = 'amq.topic'
# unused fanout and reply queues vanish after this many milliseconds
TRANSIENT_QUEUE_EXPIRY_MS = 30 * 60 * 1000
# an addresser remembers the routes of this many send targets
SEND_ROUTES = 1024

Queue = collections.namedtuple(
    'Queue', 'name durable auto_delete exclusive arguments')
Bind = collections.namedtuple('Bind', 'queue exchange key')


class Route(collections.namedtuple('Route', 'address declare')):
    """A link address and the topology (Queue/Bind tuples) it needs."""

    __slots__ = ()

    def __new__(cls, address, declare=()):
        return super().__new__(cls, address, tuple(declare))


def select_mode(configured: str, properties: dict) -> str:
    """Pick the addressing mode from the option and the peer's Open."""
    product = (properties or {}).get('product')
    if product is not None:
        product = str(product)
    if configured != 'dynamic':
        return configured
    if product == 'RabbitMQ':
        return RABBITMQ
    if product in (None, '', 'qpid-cpp'):
        return LEGACY
    return ROUTABLE


def rabbitmq_major(properties: dict) -> int:
    """The peer's RabbitMQ major version (3 when unknown)."""
    version = str((properties or {}).get('version') or '3')
    try:
        return int(version.split('.')[0])
    except ValueError:
        return 3


class Addresser:
    """Base: exchange defaulting and the pieces every mode shares.

    A subclass answers the five ``rpc_*``/``notify_*`` questions below for
    its intermediary; ``listen=True`` asks for the source a server reads,
    otherwise for the target a client sends to.
    """

    mode = None
    # can each notification pool get its own copy of every notification?
    pools = False

    def __init__(self, conf, default_exchange: str = None,
                 vhost: str = None) -> None:
        self._conf = conf
        self._rpc_exchange = (conf.default_rpc_exchange or
                              default_exchange or 'openstack')
        self._notify_exchange = (conf.default_notification_exchange or
                                 default_exchange or 'openstack')
        self._vhost = vhost if conf.pseudo_vhost and vhost else None
        self._send_routes = {}

    def send_route(self, kind: str, target) -> Route:
        """Where a send of kind ('rpc' or 'notify') to target goes.

        Every message asks; each target's route is built once (7.8-8.8 us
        per notification for RabbitMQ 4's addresses, most of it quoting
        them), for up to SEND_ROUTES targets at a time.
        """
        key = (kind, target.exchange, target.topic, target.server,
               bool(target.fanout))
        route = self._send_routes.get(key)
        if route is None:
            if len(self._send_routes) >= SEND_ROUTES:
                self._send_routes.clear()
            route = (self.rpc_send(target) if kind == 'rpc'
                     else self.notify_send(target))
            self._send_routes[key] = route
        return route

    def _rpc_ex(self, target) -> str:
        return target.exchange or self._rpc_exchange

    def _notify_ex(self, target) -> str:
        return target.exchange or self._notify_exchange

    def _parts(self, *parts) -> list:
        head = [self._vhost] if self._vhost else []
        return head + [p for p in parts if p is not None]

    # The three RPC flavours share a selection rule.
    def rpc_send(self, target) -> Route:
        """Where a request for target goes."""
        if target.fanout:
            return self.rpc_fanout(target)
        if target.server:
            return self.rpc_server(target)
        return self.rpc_topic(target)

    def rpc_listen(self, target) -> list:
        """Sources an RPC server on target consumes from."""
        return [self.rpc_server(target, listen=True),
                self.rpc_topic(target, listen=True),
                self.rpc_fanout(target, listen=True)]

    def reply_listen(self, queue: str):
        """The reply source: None asks the peer for a dynamic source.

        queue names this process's reply queue on a broker that needs one
        (a router or qpidd gives a dynamic source instead).
        """
        return None

    def rpc_server(self, target, listen=False) -> Route:
        """Requests to one server of target's topic."""
        raise NotImplementedError

    def rpc_topic(self, target, listen=False) -> Route:
        """Requests to any one server of target's topic."""
        raise NotImplementedError

    def rpc_fanout(self, target, listen=False) -> Route:
        """Requests to every server of target's topic."""
        raise NotImplementedError

    def notify_send(self, target) -> Route:
        """Where a notification for target goes."""
        raise NotImplementedError

    def notify_listen(self, target, pool=None) -> Route:
        """The source a listener (in pool, if any) reads target from."""
        raise NotImplementedError


class LegacyAddresser(Addresser):
    """qpidd-style dotted addresses with prefixes."""

    mode = LEGACY

    def _join(self, prefix, *parts) -> str:
        return '.'.join([prefix] + self._parts(*parts))

    def rpc_server(self, target, listen=False) -> Route:
        return Route(self._join(self._conf.server_request_prefix,
                                self._rpc_ex(target), target.topic,
                                target.server))

    def rpc_topic(self, target, listen=False) -> Route:
        return Route(self._join(self._conf.group_request_prefix,
                                self._rpc_ex(target), target.topic))

    def rpc_fanout(self, target, listen=False) -> Route:
        return Route(self._join(self._conf.broadcast_prefix,
                                self._rpc_ex(target), target.topic, 'all'))

    def notify_send(self, target) -> Route:
        return Route(self._join(self._conf.group_request_prefix,
                                self._notify_ex(target), target.topic))

    def notify_listen(self, target, pool=None) -> Route:
        return self.notify_send(target)


class RoutableAddresser(Addresser):
    """qdrouterd-style slash-separated addresses, one prefix per pattern."""

    mode = ROUTABLE

    def _rpc(self, kind, *parts) -> str:
        return '/'.join([self._conf.rpc_address_prefix, kind] +
                        self._parts(*parts))

    def rpc_server(self, target, listen=False) -> Route:
        return Route(self._rpc(self._conf.unicast_address,
                               self._rpc_ex(target), target.topic,
                               target.server))

    def rpc_topic(self, target, listen=False) -> Route:
        return Route(self._rpc(self._conf.anycast_address,
                               self._rpc_ex(target), target.topic))

    def rpc_fanout(self, target, listen=False) -> Route:
        return Route(self._rpc(self._conf.multicast_address,
                               self._rpc_ex(target), target.topic))

    def notify_send(self, target) -> Route:
        return Route('/'.join([self._conf.notify_address_prefix,
                               self._conf.anycast_address] +
                              self._parts(self._notify_ex(target),
                                          target.topic)))

    def notify_listen(self, target, pool=None) -> Route:
        return self.notify_send(target)


class RabbitAddresser(Addresser):
    """Queues and amq.topic bindings on RabbitMQ 3.x (v1) or 4.x (v2).

    RPC to a topic or a server goes to a durable queue named like the
    legacy address; fanout and notifications go through amq.topic with the
    legacy name as routing key, to a queue per fanout server, per
    notification pool, and a durable default queue for notifications.
    Replies come back to a queue of this process.
    """

    mode = RABBITMQ
    pools = True

    def __init__(self, conf, default_exchange=None, vhost=None,
                 major: int = 4) -> None:
        super().__init__(conf, default_exchange, vhost)
        self.major = major

    def _name(self, prefix, *parts) -> str:
        return '.'.join([prefix] + self._parts(*parts))

    def queue_address(self, name: str) -> str:
        """The address of an existing queue."""
        if self.major >= 4:
            return '/queues/' + urllib.parse.quote(name, safe='')
        return '/amq/queue/' + name

    def exchange_address(self, exchange: str, key: str) -> str:
        """The address that publishes to exchange with routing key."""
        if self.major >= 4:
            return '/exchanges/%s/%s' % (urllib.parse.quote(exchange, safe=''),
                                         urllib.parse.quote(key, safe=''))
        return '/exchange/%s/%s' % (exchange, key)

    def _durable(self, name) -> Queue:
        """A queue that outlives its consumers: quorum when asked for."""
        arguments = ()
        if self._conf.rabbit_quorum_queue:
            arguments = (('x-queue-type', 'quorum'),)
        return Queue(name, True, False, False, arguments)

    def _durable_queue(self, name) -> Route:
        return Route(self.queue_address(name), [self._durable(name)])

    def rpc_server(self, target, listen=False) -> Route:
        return self._durable_queue(
            self._name(self._conf.server_request_prefix,
                       self._rpc_ex(target), target.topic, target.server))

    def rpc_topic(self, target, listen=False) -> Route:
        return self._durable_queue(
            self._name(self._conf.group_request_prefix,
                       self._rpc_ex(target), target.topic))

    def _fanout_key(self, target) -> str:
        return self._name(self._conf.broadcast_prefix, self._rpc_ex(target),
                          target.topic, 'all')

    def rpc_fanout(self, target, listen=False) -> Route:
        key = self._fanout_key(target)
        if not listen:
            return Route(self.exchange_address(TOPIC_EXCHANGE, key))
        name = '%s.%s' % (key, uuid.uuid4().hex)
        return Route(self.queue_address(name),
                     [self._transient(name), Bind(name, TOPIC_EXCHANGE, key)])

    def _transient(self, name) -> Queue:
        # 4.x deprecates non-exclusive transient queues: keep them durable
        # and let auto-delete plus an expiry remove them.
        return Queue(name, True, True, False,
                     (('x-expires', TRANSIENT_QUEUE_EXPIRY_MS),))

    def _notify_key(self, target) -> str:
        return self._name('notify', self._notify_ex(target), target.topic)

    def notify_send(self, target) -> Route:
        key = self._notify_key(target)
        return Route(self.exchange_address(TOPIC_EXCHANGE, key),
                     [self._durable(key), Bind(key, TOPIC_EXCHANGE, key)])

    def notify_listen(self, target, pool=None) -> Route:
        key = self._notify_key(target)
        name = key if not pool else '%s.pool.%s' % (key, pool)
        return Route(self.queue_address(name),
                     [self._durable(name), Bind(name, TOPIC_EXCHANGE, key)])

    def reply_listen(self, queue: str) -> Route:
        if self.major >= 4:
            declared = Queue(queue, False, False, True, ())
        else:
            declared = self._transient(queue)
        return Route(self.queue_address(queue), [declared])


def make_addresser(mode: str, conf, default_exchange=None, vhost=None,
                   properties=None) -> Addresser:
    """Build the addresser for a mode picked by :func:`select_mode`."""
    if mode == RABBITMQ:
        return RabbitAddresser(conf, default_exchange, vhost,
                               rabbitmq_major(properties))
    if mode == LEGACY:
        return LegacyAddresser(conf, default_exchange, vhost)
    return RoutableAddresser(conf, default_exchange, vhost)
