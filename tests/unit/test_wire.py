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

"""The pure-Python message codec against proton's own.

wire.encode must write the very bytes proton writes for the same fields;
wire.decode must read what proton reads, or raise Unsupported (and nothing
else) so that proton decodes it instead.
"""

import struct
import uuid

from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
import proton
import pytest

from oslo_messaging_amqp1 import codec
from oslo_messaging_amqp1 import wire

SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# short and long (over 255 bytes: the 32-bit encodings) texts
texts = st.text(max_size=20) | st.text(min_size=250, max_size=400)
ids = (st.none() | texts | st.uuids() | st.integers(0, 2 ** 64 - 1) |
       st.binary(max_size=300))
bodies = st.none() | texts | st.binary(max_size=300)
seconds = st.none() | st.floats(min_value=0.001, max_value=4e6)
expiries = st.none() | st.floats(min_value=1.0, max_value=4e9)
# proton passes addresses to C as NUL-terminated strings: it would cut
# them at a NUL, which no address of ours has
addresses = st.none() | texts.filter(lambda t: '\x00' not in t)


def _proton(body, id, correlation_id, reply_to, durable, ttl, expiry_time):
    message = proton.Message(body=body)
    for name, value in (('id', id), ('correlation_id', correlation_id),
                        ('reply_to', reply_to), ('ttl', ttl),
                        ('expiry_time', expiry_time)):
        if value is not None:
            setattr(message, name, value)
    if durable:
        message.durable = True
    return message


@SETTINGS
@given(body=bodies, id=ids, correlation_id=ids,
       reply_to=addresses, durable=st.booleans(), ttl=seconds,
       expiry_time=expiries)
def test_encode_writes_what_proton_writes(body, id, correlation_id,
                                          reply_to, durable, ttl,
                                          expiry_time):
    fields = (body, id, correlation_id, reply_to, durable, ttl, expiry_time)
    assert wire.encode(*fields) == bytes(_proton(*fields).encode())


def _same_fields(ours, theirs):
    assert ours.body == theirs.body
    for name in ('id', 'correlation_id', 'reply_to', 'durable', 'address',
                 'subject'):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert (ours.ttl or 0) == pytest.approx(theirs.ttl)
    assert (ours.expiry_time or 0) == pytest.approx(theirs.expiry_time)


@SETTINGS
@given(body=bodies, id=st.none() | texts, correlation_id=st.none() | texts,
       reply_to=addresses, durable=st.booleans(), ttl=seconds,
       expiry_time=expiries)
def test_decode_reads_what_proton_reads(body, id, correlation_id, reply_to,
                                        durable, ttl, expiry_time):
    data = bytes(_proton(body, id, correlation_id, reply_to, durable, ttl,
                         expiry_time).encode())
    theirs = proton.Message()
    theirs.decode(data)
    _same_fields(wire.decode(data), theirs)


# symbols are ASCII
symbols = st.text(alphabet=st.characters(max_codepoint=127), min_size=1,
                  max_size=10)
annotation_values = (st.none() | st.booleans() | st.text(max_size=10) |
                     st.integers(-2 ** 31, 2 ** 31 - 1) |
                     st.floats(allow_nan=False) | st.binary(max_size=10))


@SETTINGS
@given(annotations=st.dictionaries(symbols,
                                   annotation_values, max_size=4),
       properties=st.dictionaries(st.text(max_size=10), annotation_values,
                                  max_size=4),
       subject=addresses, address=addresses)
def test_decode_skips_what_brokers_add(annotations, properties, subject,
                                       address):
    """Annotations and application properties (RabbitMQ adds some)."""
    theirs = proton.Message(body='{"x": 1}', subject=subject,
                            address=address, properties=properties or None)
    theirs.annotations = dict((proton.symbol(k), v)
                              for k, v in annotations.items()) or None
    data = bytes(theirs.encode())
    decoded = proton.Message()
    decoded.decode(data)
    ours = wire.decode(data)
    _same_fields(ours, decoded)
    assert (ours.annotations or {}) == dict(decoded.annotations or {})
    assert (ours.properties or {}) == dict(decoded.properties or {})


def test_heartbeat_from_rabbitmq_has_an_empty_data_section():
    data = bytes(proton.Message(correlation_id='c1').encode()) + \
        b'\x00Su\xa0\x00'
    message = wire.decode(data)
    assert message.correlation_id == 'c1'
    assert message.body == b''
    assert codec.is_heartbeat(message)


@pytest.mark.parametrize('body', [{'a': 1}, ['x'], 42, proton.symbol('s')],
                         ids=['map', 'list', 'int', 'symbol'])
def test_other_bodies_are_left_to_proton(body):
    data = bytes(proton.Message(body=body).encode())
    if isinstance(body, proton.symbol):
        # a symbol is a str subclass to proton: read as text here
        assert wire.decode(data).body == 'S'.lower()
        return
    with pytest.raises(wire.Unsupported):
        wire.decode(data)
    message = codec.decode_message(data)
    assert isinstance(message, proton.Message)
    assert message.body == body


@pytest.mark.parametrize('mid', [uuid.uuid4(), 7, b'\x01\x02'],
                         ids=['uuid', 'ulong', 'binary'])
def test_ids_that_are_not_strings_are_left_to_proton(mid):
    data = bytes(proton.Message(body='x', correlation_id=mid).encode())
    with pytest.raises(wire.Unsupported):
        wire.decode(data)
    assert codec.decode_message(data).correlation_id == mid


def test_two_body_sections_are_left_to_proton():
    one = b'\x00Su\xa0\x01a'
    with pytest.raises(wire.Unsupported):
        wire.decode(b'\x00SpE\x00SsE' + one + one)


def test_deep_nesting_is_left_to_proton():
    value = b'\x40'
    for _i in range(5000):
        value = b'\xd0' + struct.pack('>II', len(value) + 4, 1) + value
    with pytest.raises(wire.Unsupported, match='recursion'):
        wire.decode(b'\x00Sr' + value)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_garbage_raises_only_unsupported(data):
    try:
        wire.decode(data)
    except wire.Unsupported:
        pass


@SETTINGS
@given(data=st.binary(max_size=60))
def test_garbage_after_a_valid_start_raises_only_unsupported(data):
    try:
        wire.decode(b'\x00SpE\x00Ss' + data)
    except wire.Unsupported:
        pass


def test_out_message_falls_back_to_proton_for_other_bodies():
    message = codec.OutMessage({'a': 1}, correlation_id='c')
    decoded = proton.Message()
    decoded.decode(message.encode())
    assert decoded.body == {'a': 1}
    assert decoded.correlation_id == 'c'
