# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""AMQP 1.0 message sections <-> bytes in pure Python.

The driver's own messages have a fixed shape (header, properties, one
AMQP-value section holding a string), and so do nearly all it receives.
Encoding and decoding them here, instead of through proton's Message, saves
some thirty calls into the C library per message, each of which releases
and takes back the GIL. The bytes are those proton writes for the same
fields (the unit tests compare them).

What this module does not handle raises :class:`Unsupported`; the callers
then use proton's Message, so unusual input behaves as before.
"""

import struct
import uuid

# section descriptors (AMQP 1.0 part 3.2)
HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS, PROPERTIES = (
    0x70, 0x71, 0x72, 0x73)
APPLICATION_PROPERTIES, DATA, SEQUENCE, VALUE, FOOTER = (
    0x74, 0x75, 0x76, 0x77, 0x78)

_U8 = struct.Struct('>B')
_U16 = struct.Struct('>H')
_U32 = struct.Struct('>I')
_U64 = struct.Struct('>Q')
_I8 = struct.Struct('>b')
_I16 = struct.Struct('>h')
_I32 = struct.Struct('>i')
_I64 = struct.Struct('>q')
_F32 = struct.Struct('>f')
_F64 = struct.Struct('>d')
_NULL = b'\x40'


class Unsupported(ValueError):
    """Bytes or values this module leaves to proton."""


# ---------------------------------------------------------------- encoding


def _str(text: str) -> bytes:
    raw = text.encode('utf-8')
    if len(raw) < 256:
        return b'\xa1' + _U8.pack(len(raw)) + raw
    return b'\xb1' + _U32.pack(len(raw)) + raw


def _binary(raw) -> bytes:
    raw = bytes(raw)
    if len(raw) < 256:
        return b'\xa0' + _U8.pack(len(raw)) + raw
    return b'\xb0' + _U32.pack(len(raw)) + raw


def _message_id(value) -> bytes:
    """A message-id or correlation-id: string, binary, ulong or uuid."""
    if value is None:
        return _NULL
    if isinstance(value, str):
        return _str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _binary(value)
    if isinstance(value, uuid.UUID):
        return b'\x98' + value.bytes
    if isinstance(value, int) and not isinstance(value, bool) and \
            0 <= value < 2 ** 64:
        if value == 0:
            return b'\x44'
        if value < 256:
            return b'\x53' + _U8.pack(value)
        return b'\x80' + _U64.pack(value)
    raise Unsupported('id of type %s' % type(value).__name__)


def _uint(value: int) -> bytes:
    """A uint in its shortest form, as proton writes it."""
    if value == 0:
        return b'\x43'
    if value < 256:
        return b'\x52' + _U8.pack(value)
    return b'\x70' + _U32.pack(value)


def _list(descriptor: int, fields) -> bytes:
    """A described list, trailing nulls left out, as proton writes it."""
    while fields and fields[-1] == _NULL:
        fields.pop()
    head = b'\x00\x53' + _U8.pack(descriptor)
    if not fields:
        return head + b'\x45'
    body = b''.join(fields)
    if len(body) + 1 < 256:
        return head + b'\xc0' + _U8.pack(len(body) + 1) + \
            _U8.pack(len(fields)) + body
    return head + b'\xd0' + _U32.pack(len(body) + 4) + \
        _U32.pack(len(fields)) + body


def encode(body=None, id=None, correlation_id=None, reply_to=None,
           durable=False, ttl=None, expiry_time=None) -> bytes:
    """The bytes of a message with these fields.

    ttl and expiry_time are in seconds, as in proton's Message; body is a
    string, bytes or None (no body section).
    """
    # proton leaves out what equals the default: false, priority 4, 0
    header = [b'\x41' if durable else _NULL, _NULL,
              _uint(int(ttl * 1000)) if ttl else _NULL]
    props = [_message_id(id), _NULL, _NULL, _NULL,
             _NULL if reply_to is None else _str(reply_to),
             _message_id(correlation_id), _NULL, _NULL,
             b'\x83' + _I64.pack(int(expiry_time * 1000)) if expiry_time
             else _NULL]
    parts = [_list(HEADER, header), _list(PROPERTIES, props)]
    if isinstance(body, str):
        parts.append(b'\x00\x53\x77' + _str(body))
    elif isinstance(body, (bytes, bytearray, memoryview)):
        parts.append(b'\x00\x53\x77' + _binary(body))
    elif body is not None:
        raise Unsupported('body of type %s' % type(body).__name__)
    return b''.join(parts)


# ---------------------------------------------------------------- decoding


def _fixed(unpack, size):
    def read(buf, pos):
        return unpack(buf, pos)[0], pos + size
    return read


def _variable(size_struct, convert):
    width = size_struct.size

    def read(buf, pos):
        n = size_struct.unpack_from(buf, pos)[0]
        pos += width
        end = pos + n
        if end > len(buf):
            raise Unsupported('truncated value')
        return convert(buf[pos:end]), end
    return read


def _compound(size_struct, is_map):
    width = size_struct.size

    def read(buf, pos):
        size = size_struct.unpack_from(buf, pos)[0]
        count = size_struct.unpack_from(buf, pos + width)[0]
        end = pos + width + size
        pos += 2 * width
        items = []
        for _i in range(count):
            item, pos = _value(buf, pos)
            items.append(item)
        if pos != end:
            raise Unsupported('compound size does not match its items')
        if not is_map:
            return items, pos
        if count % 2:
            raise Unsupported('map with an odd count')
        try:
            return dict(zip(items[0::2], items[1::2])), pos
        except TypeError:  # a key proton would wrap: a list, a map
            raise Unsupported('map key of an unhashable type')
    return read


def _constant(value):
    def read(buf, pos):
        return value, pos
    return read


def _text(raw) -> str:
    return str(raw, 'utf-8')


_READERS = {
    0x40: _constant(None), 0x41: _constant(True), 0x42: _constant(False),
    0x43: _constant(0), 0x44: _constant(0), 0x45: _constant([]),
    0x50: _fixed(_U8.unpack_from, 1), 0x51: _fixed(_I8.unpack_from, 1),
    0x52: _fixed(_U8.unpack_from, 1), 0x53: _fixed(_U8.unpack_from, 1),
    0x54: _fixed(_I8.unpack_from, 1), 0x55: _fixed(_I8.unpack_from, 1),
    0x56: _fixed(lambda b, p: (b[p] != 0,), 1),
    0x60: _fixed(_U16.unpack_from, 2), 0x61: _fixed(_I16.unpack_from, 2),
    0x70: _fixed(_U32.unpack_from, 4), 0x71: _fixed(_I32.unpack_from, 4),
    0x72: _fixed(_F32.unpack_from, 4),
    0x80: _fixed(_U64.unpack_from, 8), 0x81: _fixed(_I64.unpack_from, 8),
    0x82: _fixed(_F64.unpack_from, 8), 0x83: _fixed(_I64.unpack_from, 8),
    0x98: _fixed(lambda b, p: (uuid.UUID(bytes=bytes(b[p:p + 16])),), 16),
    0xa0: _variable(_U8, bytes), 0xb0: _variable(_U32, bytes),
    0xa1: _variable(_U8, _text), 0xb1: _variable(_U32, _text),
    0xa3: _variable(_U8, _text), 0xb3: _variable(_U32, _text),
    0xc0: _compound(_U8, False), 0xd0: _compound(_U32, False),
    0xc1: _compound(_U8, True), 0xd1: _compound(_U32, True),
}


def _value(buf, pos):
    """Decode the value at pos; return it and the position after it."""
    code = buf[pos]
    reader = _READERS.get(code)
    if reader is None:
        # described values, arrays, decimals, char: proton's job
        raise Unsupported('type code 0x%02x' % code)
    return reader(buf, pos + 1)


class InMessage:
    """A received message: the fields the driver reads, as proton names them.

    Times are in seconds; absent fields are None (durable: False).
    """

    __slots__ = ('body', 'id', 'correlation_id', 'reply_to', 'durable',
                 'ttl', 'priority', 'address', 'subject', 'expiry_time',
                 'instructions', 'annotations', 'properties')

    def __init__(self) -> None:
        self.body = self.id = self.correlation_id = self.reply_to = None
        self.ttl = self.priority = self.address = self.subject = None
        self.expiry_time = None
        self.instructions = self.annotations = self.properties = None
        self.durable = False


def _field(fields, index):
    return fields[index] if index < len(fields) else None


def _set_header(msg, fields) -> None:
    if not isinstance(fields, list):
        raise Unsupported('header is not a list')
    msg.durable = bool(_field(fields, 0))
    priority = _field(fields, 1)
    msg.priority = 4 if priority is None else priority
    ttl = _field(fields, 2)
    msg.ttl = None if ttl is None else ttl / 1000.0


def _set_properties(msg, fields) -> None:
    if not isinstance(fields, list):
        raise Unsupported('properties are not a list')
    msg.id = _field(fields, 0)
    msg.address = _field(fields, 2)
    msg.subject = _field(fields, 3)
    msg.reply_to = _field(fields, 4)
    msg.correlation_id = _field(fields, 5)
    expiry = _field(fields, 8)
    msg.expiry_time = None if expiry is None else expiry / 1000.0
    for name in ('id', 'correlation_id'):
        if not isinstance(getattr(msg, name), (str, type(None))):
            # proton gives binary, uuid and ulong ids their own types
            raise Unsupported('%s is not a string' % name)


def decode(data) -> InMessage:
    """Decode a whole message; raise Unsupported for proton to do it."""
    buf = memoryview(data) if not isinstance(data, bytes) else data
    msg = InMessage()
    pos, end, have_body = 0, len(buf), False
    try:
        while pos < end:
            if buf[pos] != 0x00 or buf[pos + 1] != 0x53:
                raise Unsupported('section without a small descriptor')
            section = buf[pos + 2]
            value, pos = _value(buf, pos + 3)
            if section == HEADER:
                _set_header(msg, value)
            elif section == PROPERTIES:
                _set_properties(msg, value)
            elif section == DELIVERY_ANNOTATIONS:
                msg.instructions = value
            elif section == MESSAGE_ANNOTATIONS:
                msg.annotations = value
            elif section == APPLICATION_PROPERTIES:
                msg.properties = value
            elif section in (VALUE, DATA) and not have_body:
                if section == DATA and not isinstance(value, bytes):
                    raise Unsupported('data section without binary')
                if not isinstance(value, (str, bytes, type(None))):
                    # maps and lists: proton's own types for them
                    raise Unsupported('body of another type')
                msg.body, have_body = value, True
            elif section != FOOTER:
                raise Unsupported('section 0x%02x' % section)
    except Unsupported:
        raise
    except (IndexError, struct.error, ValueError, RecursionError) as exc:
        # ValueError: bad UTF-8, a short uuid; RecursionError: nesting
        raise Unsupported('malformed: %s' % exc)
    if pos != end:
        raise Unsupported('trailing bytes')
    return msg
