# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Hand-offs from native threads to green threads, without polling.

A native thread must never touch a green primitive: taking a green lock or
sending a green event from another OS thread raises ``greenlet.error:
Cannot switch to a different thread`` when it has to wait or wake anyone.
Native threads that serve green callers are the I/O thread of a process
that uses green threads without monkey-patching (oslo.messaging's eventlet
executor) and the blocking helpers of any I/O loop (see :mod:`eventloop`;
in a patched process the loop itself is green). They hand such work to a
:class:`Bridge`: one per eventlet hub, a native deque of calls and a pipe.
The native thread appends the call and writes one byte to the pipe; a
green thread of that hub, parked in ``trampoline()`` on the pipe's other
end, runs the calls. A call made on the hub's own OS thread runs at once.
A green waiter therefore sleeps in its hub until its result is in, costs
no CPU while it waits and wakes within one hub turn (polling with sleeps,
the first design, woke up to 20 ms late and 1,000 waiters woke the hub
50,000 times a second).

Log records made on such a native thread take the same way
(:class:`IOLogger`): logging's locks are green in a patched process.
"""

import collections
import errno
import logging
import sys


def original(name: str):
    """Return module ``name`` as it was before eventlet patched it."""
    if 'eventlet' in sys.modules:
        try:
            from eventlet import patcher
            return patcher.original(name)
        except ImportError:  # pragma: no cover - broken eventlet install
            pass
    return __import__(name)


_threading = original('threading')
# os.read and os.write are replaced by eventlet's in place, in the module
# this process imported before monkey-patching too: the posix functions
# are never patched (a green read on the pipe would park the bridge)
_os = __import__('posix')

# set on the I/O thread of a patched process: the bridge of its log records
_io_thread = _threading.local()

# this process's id, renewed in a forked child: checked on hot paths
_pid = [_os.getpid()]


def _forked_child() -> None:
    _pid[0] = _os.getpid()


_os.register_at_fork(after_in_child=_forked_child)


def pid() -> int:
    """This process's id, without a system call (kept fresh by fork)."""
    return _pid[0]


class Bridge:
    """Calls from any OS thread, run by a green thread of one hub."""

    def __init__(self) -> None:
        import eventlet
        self._calls = collections.deque()
        self._r, self._w = _os.pipe()
        _os.set_blocking(self._r, False)
        _os.set_blocking(self._w, False)
        # a byte is on its way: later calls need not write another
        self._pending = False
        self.pid = pid()
        # the hub's OS thread
        self.os_thread = _threading.get_ident()
        self._thread = eventlet.spawn(self._run)

    def call(self, fn, *args) -> None:
        """Run fn(*args) on this bridge's hub soon (any thread).

        On the hub's own OS thread, with nothing queued before it, the call
        runs at once: a green loop wakes its callers without the pipe.
        """
        if _threading.get_ident() == self.os_thread and not self._calls:
            _run_one(fn, args)
            return
        self._calls.append((fn, args))
        if self._pending:
            return
        self._pending = True
        try:
            _os.write(self._w, b'x')
        except BlockingIOError:
            pass  # the pipe is full of wake-up bytes

    def _drain(self) -> None:
        try:
            while _os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        except OSError as exc:  # pragma: no cover - closed under us
            if exc.errno != errno.EBADF:
                raise

    def _run(self) -> None:
        from eventlet import hubs
        calls = self._calls
        while True:
            hubs.trampoline(self._r, read=True)
            self._drain()
            # after the drain: a call queued from now on writes a byte
            self._pending = False
            while calls:
                fn, args = calls.popleft()
                _run_one(fn, args)


def _run_one(fn, args) -> None:
    """Run one hand-off on the hub's OS thread; log what it raises."""
    try:
        fn(*args)
    except Exception:
        logging.getLogger(__name__).exception(
            'Unexpected error in green hand-off %s', fn)


def bridge() -> Bridge:
    """The bridge of the calling green thread's hub (made on first use)."""
    from eventlet import hubs
    hub = hubs.get_hub()
    found = getattr(hub, '_amqp1_bridge', None)
    if found is None or found.pid != pid():
        found = hub._amqp1_bridge = Bridge()
    return found


def _send(event) -> None:
    if not event.ready():
        event.send(True)


class Sleepers:
    """Green threads waiting for something the I/O thread will do.

    A green thread waits with :meth:`wait_until`; :meth:`wake_all` (any
    thread) wakes every one, which then checks its condition again.
    """

    __slots__ = ('_waiting',)

    def __init__(self) -> None:
        self._waiting = []

    def add(self):
        """Register the calling green thread; returns its token."""
        from eventlet import event
        token = (bridge(), event.Event())
        self._waiting.append(token)
        return token

    def wait_until(self, ready, deadline, clock) -> bool:
        """Sleep until ready() (green thread); False at deadline.

        The caller is registered before ready() is checked again, so a
        wake-up between the two is not missed.
        """
        while not ready():
            token = self.add()
            try:
                if ready():
                    return True
                timeout = None
                if deadline is not None:
                    timeout = deadline - clock()
                    if timeout <= 0:
                        return False
                token[1].wait(timeout)
            finally:
                self._discard(token)
        return True

    def _discard(self, token) -> None:
        try:
            self._waiting.remove(token)
        except ValueError:
            pass

    def wake_all(self) -> None:
        """Wake every registered green thread (any thread)."""
        if not self._waiting:
            return
        for hub_bridge, event in list(self._waiting):
            hub_bridge.call(_send, event)


def io_thread_started(log_bridge) -> None:
    """Mark the calling native thread as an I/O thread (see IOLogger)."""
    _io_thread.bridge = log_bridge


class IOLogger:
    """A module's logger, safe on the I/O thread of a patched process.

    There the record is made on the I/O thread (caller, time, exception)
    and handled by the bridge of the hub that made the loop; anywhere else
    it is logged as usual.
    """

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def _log(self, level, msg, args, exc_info=None) -> None:
        log_bridge = getattr(_io_thread, 'bridge', None)
        logger = self.logger
        if log_bridge is None:
            logger.log(level, msg, *args, exc_info=exc_info, stacklevel=3)
            return
        # no lock taken: isEnabledFor may take logging's (green) lock
        if (logger.manager.disable >= level or
                level < logger.getEffectiveLevel()):
            return
        if exc_info:
            exc_info = sys.exc_info()
        fn, lno, func, sinfo = logger.findCaller(False, stacklevel=3)
        record = logger.makeRecord(logger.name, level, fn, lno, msg, args,
                                   exc_info or None, func, None, sinfo)
        log_bridge.call(logger.handle, record)

    def isEnabledFor(self, level: int) -> bool:
        """Whether a record of level would be logged (never locks)."""
        logger = self.logger
        return not (logger.manager.disable >= level or
                    level < logger.getEffectiveLevel())

    def log(self, level, msg, *args, exc_info=None) -> None:
        self._log(level, msg, args, exc_info)

    def debug(self, msg, *args, exc_info=None) -> None:
        self._log(logging.DEBUG, msg, args, exc_info)

    def info(self, msg, *args, exc_info=None) -> None:
        self._log(logging.INFO, msg, args, exc_info)

    def warning(self, msg, *args, exc_info=None) -> None:
        self._log(logging.WARNING, msg, args, exc_info)

    def error(self, msg, *args, exc_info=None) -> None:
        self._log(logging.ERROR, msg, args, exc_info)

    def exception(self, msg, *args, exc_info=True) -> None:
        self._log(logging.ERROR, msg, args, exc_info)
