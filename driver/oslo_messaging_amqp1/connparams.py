# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""From transport URL and ``[oslo_messaging_amqp]`` to connection settings.

Pure functions of the options and one host: the AMQP 1.0 connection's
properties for pyngus (SASL, TLS, virtual host, idle timeout) and the
AMQP 0-9-1 parameters RabbitMQ 3.x declarations use.
"""

import os
import socket
import sys

import proton

# mechanisms that authenticate a named user (the proton wheels only
# implement PLAIN; the others need a Cyrus SASL build)
USER_MECHANISMS = 'PLAIN SCRAM-SHA-256 SCRAM-SHA-1 DIGEST-MD5'

SASL_OUTCOMES = {proton.SASL.AUTH: 'credentials refused',
                 proton.SASL.SYS: 'SASL system error',
                 proton.SASL.PERM: 'SASL permanent error, e.g. no common '
                                   'mechanism',
                 proton.SASL.TEMP: 'SASL temporary error'}


class Host:
    """One host of the transport URL."""

    def __init__(self, hostname, port, username=None, password=None):
        self.hostname = hostname or 'localhost'
        self.port = int(port or 5672)
        self.username = username
        self.password = password

    def __str__(self) -> str:
        # never the password
        return '%s:%s' % (self.hostname, self.port)


class ConnectionParams:
    """The settings every connection of one transport is opened with."""

    def __init__(self, opts, url) -> None:
        self.opts = opts
        self.hosts = [Host(h.hostname, h.port, h.username, h.password)
                      for h in url.hosts] or [Host('localhost', 5672)]
        self.vhost = url.virtual_host or None

    @property
    def tls(self) -> bool:
        """Is TLS asked for?"""
        o = self.opts
        return bool(o.ssl or o.ssl_ca_file or o.ssl_cert_file)

    @property
    def real_vhost(self):
        """The virtual host to open, when it is not a pseudo one."""
        if self.vhost and not self.opts.pseudo_vhost:
            return self.vhost
        return None

    def properties(self, host: Host, vhost_prefix: bool) -> dict:
        """pyngus connection properties for host.

        vhost_prefix: the peer picks a virtual host by ``vhost:NAME``.
        """
        o = self.opts
        props = {
            'hostname': host.hostname,
            'properties': {proton.symbol('process'):
                           os.path.basename(sys.argv[0] or 'python'),
                           proton.symbol('pid'): os.getpid(),
                           proton.symbol('node'): socket.gethostname()},
            'x-force-sasl': True,
        }
        if self.real_vhost:
            props['hostname'] = ('vhost:' + self.vhost if vhost_prefix
                                 else self.vhost)
        if o.idle_timeout:
            props['idle-time-out'] = o.idle_timeout
        if o.trace:
            props['x-trace-protocol'] = True
        props.update(self._sasl(host))
        if self.tls:
            props.update(self._tls(host))
        return props

    def _sasl(self, host: Host) -> dict:
        o = self.opts
        props = {}
        if host.username:
            user = host.username
            if o.sasl_default_realm and '@' not in user:
                user = '%s@%s' % (user, o.sasl_default_realm)
            props['x-username'] = user
            props['x-password'] = host.password or ''
        if o.sasl_mechanisms:
            props['x-sasl-mechs'] = o.sasl_mechanisms
        elif host.username:
            # a user was named: never fall back to ANONYMOUS (RabbitMQ
            # offers it first and would log us in as its default user)
            props['x-sasl-mechs'] = USER_MECHANISMS
        if o.sasl_config_dir:
            props['x-sasl-config-dir'] = o.sasl_config_dir
        if o.sasl_config_name:
            props['x-sasl-config-name'] = o.sasl_config_name
        return props

    def _tls(self, host: Host) -> dict:
        o = self.opts
        props = {'x-ssl': True}
        if o.ssl_ca_file:
            props['x-ssl-ca-file'] = o.ssl_ca_file
        if o.ssl_cert_file:
            props['x-ssl-identity'] = (o.ssl_cert_file,
                                       o.ssl_key_file or None,
                                       o.ssl_key_password or None)
        # the certificate must name the host (or, with ssl_verify_vhost,
        # the virtual host): pyngus checks only the CA when it is given no
        # peer name
        props['x-ssl-peer-name'] = self.ssl_peer_name(host)
        return props

    def ssl_peer_name(self, host: Host) -> str:
        """The name the peer's TLS certificate must carry."""
        if self.opts.ssl_verify_vhost and self.vhost:
            return self.vhost
        return host.hostname

    def amqp091(self, host: Host) -> dict:
        """py-amqp connection parameters for RabbitMQ 3.x declarations."""
        o = self.opts
        params = {'host': host.hostname, 'port': host.port,
                  'username': host.username, 'password': host.password,
                  'vhost': self.real_vhost or '/', 'ssl': None}
        if self.tls:
            params['ssl'] = {'ca_certs': o.ssl_ca_file,
                             'certfile': o.ssl_cert_file,
                             'keyfile': o.ssl_key_file,
                             'password': o.ssl_key_password,
                             'peer_name': self.ssl_peer_name(host)}
        # py-amqp would pick EXTERNAL whenever RabbitMQ offers it, even for
        # a named user: PLAIN unless no user is named and EXTERNAL allowed
        mechanisms = (o.sasl_mechanisms or '').upper().split()
        params['login_method'] = 'PLAIN'
        if not host.username and 'EXTERNAL' in mechanisms:
            params['login_method'] = 'EXTERNAL'
        return params

    def auth_text(self, host: Host, detail: str) -> str:
        """The error callers get when host refused our credentials."""
        return ('AMQP 1.0 authentication failed at %s for user %r (%s): '
                'check the user name and password in transport_url and '
                'sasl_mechanisms in [oslo_messaging_amqp]' %
                (host, host.username or 'anonymous', detail))
