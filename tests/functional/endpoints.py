# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Endpoints and recorders shared by our side and the old driver's side.

Only the standard library and oslo.messaging's public API: the old
driver's venv (tests/functional/interop_peer.py) imports this module too.
"""

import threading
import time


class Recorder(object):
    """Thread-safe lists of what endpoints received, by kind."""

    def __init__(self):
        self._cond = threading.Condition()
        self._events = {}

    def add(self, kind, item):
        with self._cond:
            self._events.setdefault(kind, []).append(item)
            self._cond.notify_all()

    def wait(self, kind, count=1, timeout=5.0) -> list:
        """Up to timeout for count items of kind; take and return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._events.get(kind, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._events.pop(kind, [])

    def peek(self, kind) -> list:
        with self._cond:
            return list(self._events.get(kind, []))


class Endpoint(object):
    """RPC methods; the same names and results as interop_peer.Endpoint."""

    def __init__(self, recorder, name):
        self.recorder = recorder
        self.name = name

    def echo(self, ctxt, value):
        self.recorder.add('call', {'value': value, 'server': self.name})
        return {'echo': value, 'server': self.name,
                'user': ctxt.get('user')}

    def fail(self, ctxt, reason):
        raise ValueError(reason)

    def record(self, ctxt, value):
        self.recorder.add('cast', {'value': value, 'user': ctxt.get('user')})

    def fanned(self, ctxt, value):
        self.recorder.add('fanout', {'value': value, 'server': self.name})

    def probe(self, ctxt, token):
        self.recorder.add('probe', token)

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        self.recorder.add('slow', self.name)
        return seconds


class NotifyEndpoint(object):
    """Records every notification it gets."""

    def __init__(self, recorder, kind='notify'):
        self.recorder = recorder
        self.kind = kind

    def _record(self, priority, ctxt, publisher_id, event_type, payload):
        self.recorder.add(self.kind, {
            'priority': priority, 'publisher_id': publisher_id,
            'event_type': event_type, 'payload': payload,
            'user': ctxt.get('user')})

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record('info', ctxt, publisher_id, event_type, payload)

    def warn(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record('warn', ctxt, publisher_id, event_type, payload)

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record('error', ctxt, publisher_id, event_type, payload)


class NotifyContext(dict):
    """A context a Notifier sends on (it drops plain dicts since 14.x)."""

    def redacted_copy(self):
        return dict(self)
