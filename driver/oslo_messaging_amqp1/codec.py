# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Requests, replies and notifications <-> proton.Message.

The wire format is the one of oslo.messaging's former AMQP 1.0 driver: one
AMQP-value body section holding a JSON string, nothing in application
properties or subject. Requests and notifications carry
``{"request": MSG, "context": CTXT}`` (plus ``"call_monitor_timeout"``),
replies ``{"response": R}`` or ``{"failure": "<serialized exception>"}``.
"""

import time
import uuid

from oslo_messaging._drivers import common as om_common
from oslo_serialization import jsonutils
import proton

from oslo_messaging_amqp1 import wire

VERSION_KEY = 'oslo.version'
MESSAGE_KEY = 'oslo.message'
ENVELOPE_VERSION = '2.0'


class DecodeError(ValueError):
    """A message that is not a valid request, reply or notification."""


class OutMessage:
    """A message to send, kept as plain Python until the I/O thread.

    proton is not thread-safe and its Python binding releases the GIL in
    C calls, so proton objects are made and used on the I/O thread only.
    pyngus sends what :meth:`encode` returns; :mod:`wire` writes the bytes
    and proton's Message is only the fallback for what it does not handle.
    """

    __slots__ = ('body', 'id', 'correlation_id', 'reply_to', 'durable',
                 'ttl', 'expiry_time')

    def __init__(self, body=None, **fields) -> None:
        self.body = body
        self.id = self.correlation_id = self.reply_to = None
        self.ttl = self.expiry_time = None
        self.durable = False
        for name, value in fields.items():
            setattr(self, name, value)

    def to_proton(self) -> proton.Message:
        """The proton.Message to send (I/O thread only)."""
        message = proton.Message(body=self.body)
        for name in ('id', 'correlation_id', 'reply_to', 'ttl',
                     'expiry_time'):
            value = getattr(self, name)
            if value is not None:
                setattr(message, name, value)
        if self.durable:
            message.durable = True
        return message

    def encode(self) -> bytes:
        """The message's bytes on the wire."""
        try:
            return wire.encode(self.body, self.id, self.correlation_id,
                               self.reply_to, self.durable, self.ttl,
                               self.expiry_time)
        except (wire.Unsupported, UnicodeError):
            return bytes(self.to_proton().encode())


def decode_message(data: bytes):
    """A received message's bytes -> wire.InMessage or proton.Message."""
    try:
        return wire.decode(data)
    except wire.Unsupported:
        message = proton.Message()
        message.decode(data)
        return message


def _json_body(message: proton.Message) -> dict:
    body = message.body
    if isinstance(body, (bytes, memoryview, proton.Data)) or \
            not isinstance(body, str):
        raise DecodeError('body is %s, expected a JSON string' %
                          type(body).__name__)
    try:
        data = jsonutils.loads(body)
    except (ValueError, RecursionError) as exc:
        # RecursionError: nesting deeper than the interpreter's stack
        raise DecodeError('body is not JSON: %s' % exc)
    if not isinstance(data, dict):
        raise DecodeError('body is a JSON %s, expected an object' %
                          type(data).__name__)
    return data


def envelope(msg: dict) -> dict:
    """Wrap a notification the way the messagingv2 driver expects."""
    return {VERSION_KEY: ENVELOPE_VERSION, MESSAGE_KEY: jsonutils.dumps(msg)}


def unwrap(msg):
    """Undo :func:`envelope` when present."""
    if isinstance(msg, dict) and VERSION_KEY in msg:
        inner = msg.get(MESSAGE_KEY)
        if not isinstance(inner, str):
            raise DecodeError('envelope without a message string')
        try:
            return jsonutils.loads(inner)
        except (ValueError, RecursionError) as exc:
            raise DecodeError('enveloped message is not JSON: %s' % exc)
    return msg


def encode_request(ctxt: dict, msg: dict, use_envelope: bool = False,
                   call_monitor_timeout: float = None,
                   timeout: float = None) -> OutMessage:
    """Build the message of a call, cast or notification."""
    data = {'request': envelope(msg) if use_envelope else msg,
            'context': ctxt}
    if call_monitor_timeout is not None:
        data['call_monitor_timeout'] = call_monitor_timeout
    message = OutMessage(jsonutils.dumps(data))
    if timeout:
        message.ttl = timeout
        message.expiry_time = time.time() + timeout
    return message


def decode_request(message: proton.Message):
    """Return (ctxt, msg, call_monitor_timeout) or raise DecodeError."""
    data = _json_body(message)
    if 'request' not in data:
        raise DecodeError('no "request" key')
    msg = unwrap(data['request'])
    if not isinstance(msg, dict):
        raise DecodeError('request is a %s, expected an object' %
                          type(msg).__name__)
    ctxt = data.get('context') or {}
    if not isinstance(ctxt, dict):
        raise DecodeError('context is a %s, expected an object' %
                          type(ctxt).__name__)
    cmt = data.get('call_monitor_timeout')
    if cmt is not None and (isinstance(cmt, bool) or
                            not isinstance(cmt, (int, float))):
        raise DecodeError('call_monitor_timeout is not a number')
    return ctxt, msg, cmt


def new_message_id() -> str:
    """A message id as the old driver made them: uuid4 hex."""
    return uuid.uuid4().hex


def encode_reply(correlation_id, reply=None, failure=None) -> OutMessage:
    """Build the reply to a call; failure is an exception or exc_info."""
    if failure is not None:
        data = {'failure': om_common.serialize_remote_exception(failure)}
    else:
        data = {'response': reply}
    return OutMessage(jsonutils.dumps(data), correlation_id=correlation_id)


def encode_heartbeat(correlation_id) -> OutMessage:
    """The call-monitor heartbeat: no body, just the correlation id."""
    return OutMessage(correlation_id=correlation_id)


def is_heartbeat(message: proton.Message) -> bool:
    """True for a call-monitor heartbeat.

    RabbitMQ turns a message without a body into one with an empty data
    section, so an empty binary body counts too.
    """
    body = message.body
    if body is None:
        return True
    return isinstance(body, (bytes, memoryview)) and len(body) == 0


def decode_reply(message: proton.Message, allowed_remote_exmods=None):
    """Return (result, exception); exception is None on success."""
    data = _json_body(message)
    if 'failure' in data:
        failure = data['failure']
        if not isinstance(failure, str):
            raise DecodeError('failure is not a string')
        try:
            # oslo.messaging trusts the string: garbage raises anything
            return None, om_common.deserialize_remote_exception(
                failure, allowed_remote_exmods or [])
        except Exception as exc:
            raise DecodeError('failure is not a serialized exception: '
                              '%s: %s' % (type(exc).__name__, exc))
    if 'response' not in data:
        raise DecodeError('reply has neither "response" nor "failure"')
    return data['response'], None
