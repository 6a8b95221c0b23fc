# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The [oslo_messaging_amqp] options: the old driver's names and defaults."""

import copy

from oslo_config import cfg

GROUP = 'oslo_messaging_amqp'
ADDRESSING_MODES = ('dynamic', 'legacy', 'routable')
PRE_SETTLED_TYPES = ('rpc-call', 'rpc-reply', 'rpc-cast', 'notify')

_group = cfg.OptGroup(name=GROUP, title='AMQP 1.0 driver options')


def _dep(name: str) -> list:
    """Accept the option under the pre-Newton [amqp1] group too."""
    return [cfg.DeprecatedOpt(name, group='amqp1')]


amqp1_opts = [
    cfg.StrOpt('container_name',
               deprecated_opts=_dep('container_name'),
               help='AMQP container id of this process; must be unique on '
                    'the bus. Default: a random id.'),
    cfg.IntOpt('idle_timeout', default=0,
               deprecated_opts=_dep('idle_timeout'),
               help='Seconds without traffic before the connection is '
                    'declared dead (0: never).'),
    cfg.BoolOpt('trace', default=False, deprecated_opts=_dep('trace'),
                help='Log every AMQP frame at DEBUG (very verbose).'),
    cfg.BoolOpt('ssl', default=False,
                help='Connect with TLS, using the system CA bundle unless '
                     'ssl_ca_file is set.'),
    cfg.StrOpt('ssl_ca_file', default='', deprecated_opts=_dep('ssl_ca_file'),
               help='CA certificate file (PEM) used to verify the peer.'),
    cfg.StrOpt('ssl_cert_file', default='',
               deprecated_opts=_dep('ssl_cert_file'),
               help='Client certificate (PEM) presented to the peer.'),
    cfg.StrOpt('ssl_key_file', default='',
               deprecated_opts=_dep('ssl_key_file'),
               help='Private key (PEM) of ssl_cert_file.'),
    cfg.StrOpt('ssl_key_password', secret=True,
               deprecated_opts=_dep('ssl_key_password'),
               help='Password that unlocks ssl_key_file.'),
    cfg.BoolOpt('ssl_verify_vhost', default=False,
                help='With a virtual host in the URL, check the peer '
                     'certificate against the virtual host name instead of '
                     'the DNS host name.'),
    cfg.StrOpt('sasl_mechanisms', default='',
               deprecated_opts=_dep('sasl_mechanisms'),
               help='Space separated SASL mechanisms to offer, in order of '
                    'preference (empty: all that proton supports).'),
    cfg.StrOpt('sasl_config_dir', default='',
               deprecated_opts=_dep('sasl_config_dir'),
               help='Directory holding the Cyrus SASL configuration '
                    '(only used by a Cyrus-enabled proton build).'),
    cfg.StrOpt('sasl_config_name', default='',
               deprecated_opts=_dep('sasl_config_name'),
               help='Name of the Cyrus SASL configuration file '
                    '(only used by a Cyrus-enabled proton build).'),
    cfg.StrOpt('sasl_default_realm', default='',
               help='Realm appended to user names that have none.'),
    cfg.IntOpt('connection_retry_interval', default=1, min=1,
               help='Seconds before the first reconnect attempt.'),
    cfg.IntOpt('connection_retry_backoff', default=2, min=0,
               help='Seconds added to the reconnect interval after each '
                    'failed attempt.'),
    cfg.IntOpt('connection_retry_interval_max', default=30, min=1,
               help='Upper bound, in seconds, of the reconnect interval.'),
    cfg.IntOpt('link_retry_delay', default=10, min=1,
               help='Seconds to wait before re-attaching a link the peer '
                    'refused, and before resending a released message.'),
    cfg.IntOpt('default_reply_retry', default=0, min=-1,
               help='Times to retry sending a reply that failed '
                    '(-1: until it is sent).'),
    cfg.IntOpt('default_reply_timeout', default=30, min=5,
               help='Seconds a reply may take to be delivered.'),
    cfg.IntOpt('default_send_timeout', default=30, min=5,
               help='Seconds a cast may take to be delivered when the '
                    'caller gives no timeout.'),
    cfg.IntOpt('default_notify_timeout', default=30, min=5,
               help='Seconds a notification may take to be delivered.'),
    cfg.IntOpt('default_sender_link_timeout', default=600, min=1,
               help='Seconds an idle sender link is kept open before it is '
                    'closed.'),
    cfg.StrOpt('addressing_mode', default='dynamic',
               choices=ADDRESSING_MODES,
               help="Address syntax: 'legacy' (qpidd-style broker), "
                    "'routable' (qdrouterd, skupper-router) or 'dynamic' "
                    "(chosen from the peer's product: RabbitMQ gets its own "
                    "queue and exchange addresses)."),
    cfg.BoolOpt('pseudo_vhost', default=True,
                help='Put the virtual host of the URL into every address '
                     'instead of asking the peer for a virtual host.'),
    cfg.StrOpt('server_request_prefix', default='exclusive',
               deprecated_opts=_dep('server_request_prefix'),
               help='Legacy address prefix for calls to one server.'),
    cfg.StrOpt('broadcast_prefix', default='broadcast',
               deprecated_opts=_dep('broadcast_prefix'),
               help='Legacy address prefix for fanout.'),
    cfg.StrOpt('group_request_prefix', default='unicast',
               deprecated_opts=_dep('group_request_prefix'),
               help='Legacy address prefix for calls to any server of a '
                    'topic.'),
    cfg.StrOpt('rpc_address_prefix', default='openstack.org/om/rpc',
               help='Routable address prefix of RPC traffic.'),
    cfg.StrOpt('notify_address_prefix', default='openstack.org/om/notify',
               help='Routable address prefix of notifications.'),
    cfg.StrOpt('multicast_address', default='multicast',
               help='Routable address segment for fanout.'),
    cfg.StrOpt('unicast_address', default='unicast',
               help='Routable address segment for one named server.'),
    cfg.StrOpt('anycast_address', default='anycast',
               help='Routable address segment for any server of a topic.'),
    cfg.StrOpt('default_notification_exchange',
               help='Exchange of notifications whose target names none.'),
    cfg.StrOpt('default_rpc_exchange',
               help='Exchange of RPC traffic whose target names none.'),
    cfg.IntOpt('reply_link_credit', default=200, min=1,
               help='Credit window of the reply receiver.'),
    cfg.IntOpt('rpc_server_credit', default=100, min=1,
               help='Credit window of each RPC server receiver.'),
    cfg.IntOpt('notify_server_credit', default=100, min=1,
               help='Credit window of each notification receiver.'),
    cfg.MultiStrOpt('pre_settled', default=['rpc-cast', 'rpc-reply'],
                    help='Message types sent pre-settled (no delivery '
                         'outcome awaited): rpc-call, rpc-reply, rpc-cast, '
                         'notify.'),
    # not an option of the former driver (it always waited)
    cfg.IntOpt('send_window', default=100, min=0,
               help='Notifications, RPC replies and unsettled casts one '
                    'transport may have handed to the I/O thread before '
                    'their outcome is known (or a pre-settled reply is '
                    'written); the caller returns at once while the window '
                    'has room (a notification not yet accepted is resent '
                    'after a reconnect, a failure is logged at ERROR). The '
                    'first send to a target, and every one while the bus '
                    'is down, still waits. Nothing from the peer paces a '
                    'pre-settled cast: it waits to be written (and while '
                    'more than 1 MB is not yet on the wire), except up to 8 '
                    'at a time while the connection carries no calls, on a '
                    'peer that is not a router. 0: every send waits, as '
                    'the former driver did.'),
    # not an option of the former driver; named as the rabbit driver's
    cfg.BoolOpt('rabbit_quorum_queue', default=False,
                help='RabbitMQ only: declare the RPC topic and server '
                     'queues and the notification queues as quorum queues '
                     '(replicated across a cluster; needs RabbitMQ 3.8 or '
                     'later). Fanout and reply queues stay transient. A '
                     'queue that already exists as a classic queue must be '
                     'deleted first. On any other peer the connection '
                     'refuses to run.'),
]


def register(conf: cfg.ConfigOpts) -> None:
    """Register the options on conf (idempotent)."""
    # a fresh OptGroup: oslo.config keeps a registered group's options
    # (and their overrides) in the OptGroup object it was given, so one
    # shared object would share overrides between ConfigOpts instances
    if GROUP not in conf:
        conf.register_group(cfg.OptGroup(name=GROUP, title=_group.title))
    try:
        conf.register_opts(amqp1_opts, group=GROUP)
    except cfg.DuplicateOptError as exc:
        # oslo.messaging < 15 registers its own driver's options first
        raise RuntimeError(
            '[%s] is already registered with other definitions (%s): '
            'oslo.messaging older than 15 still has its own AMQP 1.0 '
            'driver. Upgrade oslo.messaging to 15 or later, or uninstall '
            'devstack-plugin-amqp1 to use the in-tree driver'
            % (GROUP, exc)) from exc


def list_opts() -> list:
    """Options for oslo-config-generator."""
    return [(_group, copy.deepcopy(amqp1_opts))]
