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

"""Property tests of the wire codec: round trips, and garbage never crashes.

Whatever a peer puts in a message, ``decode_request`` and ``decode_reply``
either return a valid result or raise ``codec.DecodeError``: the callers
(the listener's poll loop, the caller waiting for a reply) catch only that.
"""

import json
import sys
import uuid

from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
import oslo_messaging as om
import proton
import pytest

from oslo_messaging_amqp1 import codec

SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# JSON values that survive a dumps/loads round trip unchanged
json_scalars = (st.none() | st.booleans() |
                st.integers(min_value=-2 ** 63, max_value=2 ** 63) |
                st.floats(allow_nan=False, allow_infinity=False) |
                st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda inner: (st.lists(inner, max_size=5) |
                   st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=25)
json_objects = st.dictionaries(st.text(max_size=10), json_values,
                               max_size=6)
# a request as oslo.messaging makes it; a key 'oslo.version' at the top
# would make it look enveloped
requests = json_objects.filter(lambda d: codec.VERSION_KEY not in d)
monitor_timeouts = st.none() | st.integers(1, 10 ** 6) | st.floats(
    min_value=0.001, max_value=1e6)


def _wire(message: proton.Message) -> proton.Message:
    """The message as the peer gets it: encoded, then decoded."""
    copy = proton.Message()
    copy.decode(message.encode())
    return copy


@SETTINGS
@given(ctxt=json_objects, msg=requests, use_envelope=st.booleans(),
       cmt=monitor_timeouts)
def test_request_round_trip(ctxt, msg, use_envelope, cmt):
    message = codec.encode_request(ctxt, msg, use_envelope=use_envelope,
                                   call_monitor_timeout=cmt, timeout=5)
    got_ctxt, got_msg, got_cmt = codec.decode_request(_wire(message))
    assert got_ctxt == ctxt
    assert got_msg == msg
    assert got_cmt == cmt


@SETTINGS
@given(reply=json_values, correlation_id=st.text(min_size=1, max_size=40))
def test_reply_round_trip(reply, correlation_id):
    message = _wire(codec.encode_reply(correlation_id, reply=reply))
    assert message.correlation_id == correlation_id
    assert codec.decode_reply(message) == (reply, None)


class Custom(Exception):
    """An exception of a module the caller may or may not allow."""


_EXCEPTIONS = [ValueError, KeyError, RuntimeError, TypeError,
               om.MessagingTimeout, Custom]


@SETTINGS
@given(kind=st.sampled_from(_EXCEPTIONS), text=st.text(max_size=50),
       allow=st.booleans(), as_exc_info=st.booleans())
def test_failure_round_trip(kind, text, allow, as_exc_info):
    try:
        raise kind(text)
    except Exception as exc:
        failure = sys.exc_info() if as_exc_info else exc
        expected = str(exc)
    try:
        message = codec.encode_reply('cid', failure=failure)
    except TypeError:
        # oslo.messaging's serializer wants exc_info; what its RPC server
        # passes
        assert not as_exc_info
        return
    mods = [kind.__module__] if allow else []
    result, error = codec.decode_reply(_wire(message), mods)
    assert result is None
    assert isinstance(error, Exception)
    if kind.__module__ == 'builtins' or allow:
        assert isinstance(error, kind)
    else:
        assert isinstance(error, om.RemoteError)
        assert error.exc_type == kind.__name__
    # builtins keep their type and get the remote text as first argument
    shown = error.args[0] if kind.__module__ == 'builtins' else str(error)
    assert expected in shown


def _check_decoders(message):
    """Both decoders return a valid result or raise DecodeError only."""
    try:
        ctxt, msg, cmt = codec.decode_request(message)
    except codec.DecodeError:
        pass
    else:
        assert isinstance(ctxt, dict) and isinstance(msg, dict)
        assert cmt is None or (isinstance(cmt, (int, float)) and
                               not isinstance(cmt, bool))
    try:
        result, error = codec.decode_reply(message)
    except codec.DecodeError:
        pass
    else:
        assert error is None or isinstance(error, Exception)
        if error is not None:
            assert result is None
    codec.is_heartbeat(message)


# what proton can carry in a body section
amqp_scalars = (st.none() | st.booleans() |
                st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1) |
                st.floats(allow_nan=True) | st.text(max_size=40) |
                st.binary(max_size=40) | st.uuids() |
                st.text(st.characters(max_codepoint=127), max_size=10).map(
                    proton.symbol))
amqp_bodies = st.recursive(
    amqp_scalars,
    lambda inner: (st.lists(inner, max_size=4) |
                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=15)


@SETTINGS
@given(body=amqp_bodies, wire=st.booleans())
def test_any_body_decodes_or_raises_decode_error(body, wire):
    message = proton.Message(body=body)
    if wire:
        message = _wire(message)
    _check_decoders(message)


def _shapes(value):
    """Near-valid messages around value: the keys a decoder looks for."""
    return st.sampled_from([
        {'request': value, 'context': {}},
        {'request': {'method': 'm'}, 'context': value},
        {'request': {'method': 'm'}, 'call_monitor_timeout': value},
        {'request': {codec.VERSION_KEY: '2.0', codec.MESSAGE_KEY: value}},
        {'request': {codec.VERSION_KEY: value}},
        {'response': value},
        {'failure': value},
        {'failure': json.dumps(value)},
        {'failure': json.dumps({'class': value, 'module': 'builtins',
                                'message': 'x'})},
        {'failure': json.dumps({'class': 'ValueError', 'module': value,
                                'message': value, 'tb': value})},
        {'failure': json.dumps({'class': 'ValueError',
                                'module': 'builtins', 'args': value,
                                'kwargs': value})},
        {'failure': json.dumps({'class': 'Exception', 'module': value,
                                'tb': [value]})},
        value,
    ])


@SETTINGS
@given(data=st.data(), value=json_values)
def test_near_valid_json_decodes_or_raises_decode_error(data, value):
    shape = data.draw(_shapes(value))
    _check_decoders(_wire(proton.Message(body=json.dumps(shape))))


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_text_body(text):
    _check_decoders(proton.Message(body=text))


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_invalid_utf8_like_content(raw):
    # as binary, and as text decoded leniently (lone surrogates included)
    _check_decoders(proton.Message(body=raw))
    _check_decoders(proton.Message(
        body=raw.decode('utf-8', errors='surrogateescape')))
    _check_decoders(proton.Message(
        body=raw.decode('latin-1')))


@pytest.mark.parametrize('body', [
    '[' * 100000,
    '{"a":' * 100000,
    json.dumps({'request': {'oslo.version': '2.0',
                            'oslo.message': '[' * 100000}}),
    json.dumps({'failure': '[' * 100000}),
    '1' * 10000,                        # int longer than str->int allows
    json.dumps({'request': {'method': 'm', 'args': {'v': 'x' * 4000000}},
                'context': {}}),
    json.dumps({'failure': json.dumps(
        {'class': 'ValueError', 'module': 'builtins',
         'message': 'm', 'tb': 'x' * 100000})}),
    '\ud800{"request": {}}',
    '{"request": {}, "context": {}}\x00',
    '',
    ' ',
    'NaN',
    '{"response": NaN}',
    '{"request": {}, "context": {}, "call_monitor_timeout": Infinity}',
    b'',
    b'\xff\xfe\xfd',
    memoryview(b'{"response": 1}'),
    proton.Data(),
    uuid.uuid4(),
    proton.symbol('request'),
    proton.Described(proton.symbol('x'), 'y'),
    proton.Array(proton.UNDESCRIBED, proton.Data.INT, 1, 2),
], ids=lambda b: type(b).__name__ + str(len(str(b)) if b else 0))
def test_nasty_bodies(body):
    _check_decoders(proton.Message(body=body))
