# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One profile per kind of intermediary: every question that depends on it.

The controller picks a profile from the peer's Open frame (its ``product``
and ``version`` properties) and the ``addressing_mode`` option, then asks
it; nothing else in the driver tests which peer it talks to. To support a
new intermediary, add a class here (and an addresser in addressing.py if
its addresses differ).

=========  ==========  ===========  ============  ======================
profile    addressing  body always  vhost prefix  topology declared by
=========  ==========  ===========  ============  ======================
Router     routable    no           no            nothing (routes only)
Broker     legacy      no           no            nothing (auto-create)
RabbitMQ3  rabbitmq    yes          yes           AMQP 0-9-1 (py-amqp)
RabbitMQ4  rabbitmq    yes          yes           ``/management`` link
=========  ==========  ===========  ============  ======================

A forced ``addressing_mode`` (legacy or routable) takes the plain Router
or Broker profile whatever the product says.
"""

from oslo_messaging_amqp1 import addressing
from oslo_messaging_amqp1 import topology


class Profile:
    """Base: a peer that needs nothing beyond AMQP 1.0."""

    # must every message carry a body section (heartbeats have none)?
    needs_body = False
    # does the peer pick a virtual host by 'vhost:NAME' as Open hostname?
    vhost_prefix = False
    # can it declare queues as quorum queues (rabbit_quorum_queue)?
    quorum_queues = False
    # does it keep a pre-settled message its consumer has no credit for?
    # (else a cast always waits to be written: see the driver's casts)
    queues_presettled = True

    def __init__(self, mode: str, properties: dict) -> None:
        self.mode = mode
        self.properties = properties
        self.product = properties.get('product')
        self.version = properties.get('version', '')

    def __str__(self) -> str:
        return '%s %s' % (self.product or 'unknown product', self.version)

    def addresser(self, opts, default_exchange,
                  vhost) -> addressing.Addresser:
        """The addresser for this peer (a new one per connection)."""
        return addressing.make_addresser(
            self.mode, opts, default_exchange, vhost, self.properties)

    def declarer(self, ctl):
        """What declares topology before links attach (None: nothing)."""
        return None

    def refusal(self, opts, host) -> str:
        """Why the options cannot work with this peer ('' when they can)."""
        if opts.rabbit_quorum_queue and not self.quorum_queues:
            return ('rabbit_quorum_queue is set in [oslo_messaging_amqp] '
                    'but the AMQP 1.0 peer %s is %s, not RabbitMQ: quorum '
                    'queues exist only on RabbitMQ; unset '
                    'rabbit_quorum_queue' % (
                        host, self.product or 'an unknown product'))
        return ''


class Router(Profile):
    """qdrouterd or skrouterd: routes links, stores nothing."""

    queues_presettled = False


class Broker(Profile):
    """qpidd, or a peer that does not name its product: legacy queues."""


class RabbitMQ3(Profile):
    """RabbitMQ 3.x with the rabbitmq_amqp1_0 plugin ("v1" addresses)."""

    needs_body = True
    vhost_prefix = True
    quorum_queues = True

    def declarer(self, ctl):
        """Declarations over AMQP 0-9-1 on a helper thread."""
        return topology.AmqpDeclarer(ctl.loop, ctl.params.amqp091(
            ctl.current_host))


class RabbitMQ4(RabbitMQ3):
    """RabbitMQ 4.x, native AMQP 1.0 ("v2" addresses)."""

    def declarer(self, ctl):
        """Declarations on the ``/management`` link pair."""
        return topology.ManagementDeclarer(ctl.conn, ctl.loop)


def select(configured_mode: str, properties: dict) -> Profile:
    """The profile for a peer whose Open carried properties."""
    properties = properties or {}
    mode = addressing.select_mode(configured_mode, properties)
    if mode == addressing.RABBITMQ:
        if addressing.rabbitmq_major(properties) >= 4:
            return RabbitMQ4(mode, properties)
        return RabbitMQ3(mode, properties)
    if mode == addressing.ROUTABLE:
        return Router(mode, properties)
    return Broker(mode, properties)
