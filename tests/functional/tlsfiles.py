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

"""A certificate authority made by the test, and what it signs.

:func:`make_pki` writes into a directory: ``ca.pem`` (the test CA),
``other-ca.pem`` (a CA nobody uses: the "unknown CA"), a server
certificate for ``localhost``/127.0.0.1 and the name ``amqp1.test``
(``server.pem``/``server.key``), one that expired yesterday
(``expired.pem``/``expired.key``) and a client certificate for
``amqp1-client`` whose key is encrypted with :data:`KEY_PASSWORD`
(``client.pem``/``client.key``).
"""

import datetime
import ipaddress
import os

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

KEY_PASSWORD = 'client-key-secret'
CLIENT_NAME = 'amqp1-client'
SERVER_NAME = 'amqp1.test'


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(subject, key, issuer, issuer_key, days, ca=False,
                 names=(), addresses=(), client=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    if days < 0:
        start, end = now + datetime.timedelta(days=days - 30), \
            now + datetime.timedelta(days=days)
    else:
        start, end = now - datetime.timedelta(days=1), \
            now + datetime.timedelta(days=days)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(_name(issuer)).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                              critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = (ExtendedKeyUsageOID.CLIENT_AUTH if client
                 else ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]),
                                        critical=False)
    alt = [x509.DNSName(n) for n in names] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory, name, cert=None, key=None, password=None):
    if cert is not None:
        with open(os.path.join(directory, name + '.pem'), 'wb') as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        encryption = (serialization.BestAvailableEncryption(password.encode())
                      if password else serialization.NoEncryption())
        path = os.path.join(directory, name + '.key')
        with open(path, 'wb') as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      encryption))
        os.chmod(path, 0o644)  # read by the broker, whatever its user


def make_pki(directory) -> str:
    """Write the CAs and certificates into directory; returns it."""
    os.makedirs(directory, exist_ok=True)
    ca_key = _key()
    ca = _certificate('amqp1 test CA', ca_key, 'amqp1 test CA', ca_key,
                      30, ca=True)
    _write(directory, 'ca', ca)
    other_key = _key()
    _write(directory, 'other-ca', _certificate(
        'another CA', other_key, 'another CA', other_key, 30, ca=True))
    for name, days in (('server', 30), ('expired', -1)):
        key = _key()
        cert = _certificate('localhost', key, 'amqp1 test CA', ca_key, days,
                            names=('localhost', SERVER_NAME),
                            addresses=('127.0.0.1',))
        _write(directory, name, cert, key)
    key = _key()
    _write(directory, 'client', _certificate(
        CLIENT_NAME, key, 'amqp1 test CA', ca_key, 30, client=True), key,
        KEY_PASSWORD)
    return directory
