# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The I/O thread: sockets, timers and hand-off between threads.

Everything proton/pyngus touches runs on the one thread started here. Other
threads (native or green) talk to it only through :meth:`IOLoop.call_soon`
(and :meth:`IOLoop.call_lazy`, for settlements), and wait for its answers
through :class:`Waiter` and :class:`Inbox`.

Which kind of thread, chosen from measurements (``tools/bench --eventlet``,
4 green callers, RabbitMQ 3.10, 2 cores, same run as the rabbit driver):

- Not patched: a native OS thread, with the original ``threading``,
  ``select`` and ``socket``; callers wait on bare locks and C queues.
- Monkey-patched by eventlet: a green thread of the hub that made the
  transport, parked in the hub between passes (:mod:`poller`). As a native
  thread beside the hub it gave 1,111 calls/s against the rabbit driver's
  1,074 (1.03x), every result crossing OS threads through a pipe and the
  GIL; as a green thread 1,382 against 1,010 (1.37x), client plus server
  CPU 0.63 s per 1,000 calls against 0.90 as a native thread and 1.20 for
  the rabbit driver (doc/performance.rst has the full runs).
  Its sockets stay in an epoll set from pass to pass (eventlet's green
  ``select``, before, registered them anew on every pass): over 3
  alternating runs, 1,378-1,406 calls/s against 1,341-1,354 at 100 B and
  1,367-1,383 against 1,269-1,292 at 3 KB, CPU per call 5-9 % lower.
  The price is eventlet's own: a green thread that never yields holds up
  this loop as it holds up the rabbit driver's heartbeats.

Either loop writes what a connection has to send in the same pass rather
than ask epoll or select whether the socket takes it. Green: casts
2,879-4,290/s against 2,492-3,932 (3 alternating runs, 100 B and 3 KB),
calls the same. Native: a notification sent at 450/s costs the I/O thread
2 passes instead of 3, and at 900/s the client 0.464-0.490 ms of CPU
against 0.484-0.508 (3 alternating runs, RabbitMQ 4.0); calls from 4
threads 1,118 against 1,079/s, CPU per call 0.86 against 0.89 ms (means
of 10 cells, 5 alternating runs, 100 B and 3 KB; cells vary by 30 %).
Tried and not kept: a caller's thread running the loop's pass itself
while the loop sleeps in select (a lock the loop drops around it). At 900
notifications/s it cut wake-up bytes from 7,202 to 1,549-2,029 per 7,200
and passes from 2.6 to 1.2 per message, but the client's CPU per message
stayed 0.46-0.51 ms (the work moved threads) and the caller's send took
0.31-0.41 ms, p50, against 0.16-0.28 (3 alternating runs each).

Blocking helpers (RabbitMQ 3.x declarations over AMQP 0-9-1) always run on
native threads (:meth:`IOLoop.start_helper`); under eventlet their log
records go through the hub (:mod:`green`), as they may touch no green lock.
After a fork the child's copy of a green loop stops before its next I/O:
the sockets are the parent's.
"""

import collections
import errno
import fcntl as _fcntl
import heapq
import itertools
import struct as _struct
import sys
import termios as _termios

from oslo_messaging_amqp1 import green
from oslo_messaging_amqp1 import poller

LOG = green.IOLogger(__name__)
_original = green.original

_threading = _original('threading')
_queue = _original('queue')
_socket = _original('socket')
_time = _original('time')

now = _time.monotonic
# a lazy call (a settlement) waits at most this long for the loop's next
# pass, while the loop expects one (see IOLoop.call_lazy)
LAZY_DELAY = 0.002
# how long after it last handed a message out the loop naps LAZY_DELAY
# at a time: the settlement of a message held longer sends a wake-up byte
LAZY_WINDOW = 0.008
# the unsent bytes of a socket (SIOCOUTQ on Linux)
_TIOCOUTQ = getattr(_termios, 'TIOCOUTQ', 0x5411)


def green_caller() -> bool:
    """Must the calling thread keep its eventlet hub running while it waits?

    True when eventlet monkey-patched threads, and also for a native thread
    that runs green threads of its own (oslo.messaging's eventlet executor
    spawns them in the thread that polls the listener).
    """
    if 'eventlet' not in sys.modules:
        return False
    try:
        from eventlet import hubs
        from eventlet import patcher
        if patcher.is_monkey_patched('thread'):
            return True
        return getattr(hubs._threadlocal, 'hub', None) is not None
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def patched_process() -> bool:
    """Has eventlet monkey-patched threads in this process?"""
    if 'eventlet' not in sys.modules:
        return False
    from eventlet import patcher
    return patcher.is_monkey_patched('thread')


def _sleep_until(ready, timeout, sleepers) -> bool:
    """Wait until ready(); False on timeout.

    Green callers sleep in their hub until sleepers are woken; native ones
    (only Window.drain's) sleep a little between checks.
    """
    deadline = None if timeout is None else now() + timeout
    if green_caller():
        return sleepers.wait_until(ready, deadline, now)
    pause = 0.0005
    while not ready():
        if deadline is not None and now() >= deadline:
            return False
        _time.sleep(pause)
        pause = min(pause * 2, 0.02)
    return True


class Waiter:
    """A one-shot result passed from the I/O thread to a waiting caller.

    A bare lock, held until the result is in, is the cheapest hand-off
    between native threads: one C call on each side.
    """

    __slots__ = ('_lock', '_done', '_value', '_error', '_sleepers')

    def __init__(self) -> None:
        self._lock = _threading.Lock()
        self._lock.acquire()
        self._done = False
        self._value = None
        self._error = None
        self._sleepers = None  # green waiters, made by the first one

    def _complete(self) -> None:
        if not self._done:
            self._done = True
            self._lock.release()
            if self._sleepers is not None:
                self._sleepers.wake_all()

    def set(self, value=None) -> None:
        """Complete with a value (I/O thread)."""
        if not self._done:
            self._value = value
            self._complete()

    def fail(self, error: BaseException) -> None:
        """Complete with an exception to raise in the caller (I/O thread)."""
        if not self._done:
            self._error = error
            self._complete()

    def done(self) -> bool:
        """True once set or failed."""
        return self._done

    def wait(self, timeout: float = None):
        """Block until done; return the value or raise the error.

        Returns ``None`` with ``done()`` false on timeout.
        """
        if not self._done:
            if green_caller():
                if self._sleepers is None:
                    self._sleepers = green.Sleepers()
                if not _sleep_until(self.done, timeout, self._sleepers):
                    return None
            elif self._lock.acquire(
                    timeout=-1 if timeout is None else max(0.0, timeout)):
                # open again for any other wait on this result
                self._lock.release()
            else:
                return None
        if self._error is not None:
            raise self._error
        return self._value


_CLOSED = object()  # Inbox: wakes a reader after close()


class Inbox:
    """A thread-safe FIFO filled by the I/O thread, drained by callers.

    The C ``SimpleQueue``: put and a native reader's wake-up cost one C
    call each.
    """

    def __init__(self) -> None:
        self._queue = _queue.SimpleQueue()
        self._closed = False
        self._sleepers = green.Sleepers()

    def put(self, item) -> None:
        """Append an item and wake one reader."""
        self._queue.put(item)
        self._sleepers.wake_all()

    def close(self) -> None:
        """Wake every reader; get() returns None once drained."""
        self._closed = True
        self._queue.put(_CLOSED)
        self._sleepers.wake_all()

    def _next(self, block: bool, timeout: float = None):
        """The next item that is not the close marker, or None."""
        try:
            item = self._queue.get(block, timeout)
        except _queue.Empty:
            return None
        while item is _CLOSED:
            try:
                item = self._queue.get_nowait()
            except _queue.Empty:
                self._queue.put(_CLOSED)  # wakes the next reader too
                return None
        return item

    def get(self, timeout: float = None):
        """Return the oldest item, or None on timeout or when closed."""
        if self._closed:
            return self._next(False)
        if green_caller():
            found = []

            def ready():
                item = self._next(False)
                if item is not None:
                    found.append(item)
                return bool(found) or self._closed
            if not _sleep_until(ready, timeout, self._sleepers):
                return None
            return found[0] if found else self._next(False)
        return self._next(True, None if timeout is None
                          else max(0.0, timeout))


class Window:
    """A bound on sends handed to the I/O thread and not yet finished.

    Callers take a place with :meth:`acquire` (waiting while all ``size``
    are taken), the I/O thread gives it back with :meth:`release`. The
    places are tokens in a C ``SimpleQueue``: one C call each way.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._places = _queue.SimpleQueue()
        for _i in range(size):
            self._places.put(None)
        self._sleepers = green.Sleepers()

    def _take(self) -> bool:
        try:
            self._places.get_nowait()
            return True
        except _queue.Empty:
            return False

    def acquire(self, timeout: float = None) -> bool:
        """Take a place; False when none freed up within timeout."""
        if green_caller():
            return _sleep_until(self._take, timeout, self._sleepers)
        try:
            self._places.get(True, None if timeout is None
                             else max(0.0, timeout))
            return True
        except _queue.Empty:
            return False

    def release(self) -> None:
        """Give a place back (any thread)."""
        self._places.put(None)
        self._sleepers.wake_all()

    def drain(self, timeout: float) -> bool:
        """Wait until every place is back; False on timeout.

        A native caller polls: only flush() and cleanup wait for this.
        """
        def ready():
            return self._places.qsize() >= self.size
        return _sleep_until(ready, timeout, self._sleepers)

    def __len__(self) -> int:
        return self.size - self._places.qsize()


class Timer:
    """A cancellable callback scheduled on the I/O thread."""

    __slots__ = ('deadline', 'callback', 'cancelled')

    def __init__(self, deadline: float, callback) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the callback; let go of what it refers to at once."""
        self.cancelled = True
        self.callback = None


class Socket:
    """A non-blocking TCP socket to one host (the I/O thread's only kind)."""

    def __init__(self, host: str, port: int, green: bool = False) -> None:
        self.host, self.port = host, port
        # a green loop's: a host lookup must not stop the hub
        self._resolver = __import__('socket') if green else _socket
        self.sock = None

    def connect(self) -> None:
        """Start connecting; raises OSError when it cannot even begin."""
        infos = self._resolver.getaddrinfo(self.host, self.port, 0,
                                           _socket.SOCK_STREAM)
        error = None
        for family, stype, proto, _name, addr in infos:
            sock = _socket.socket(family, stype, proto)
            sock.setblocking(False)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            rc = sock.connect_ex(addr)
            if rc in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                self.sock = sock
                return
            sock.close()
            error = OSError(rc, 'connect to %s:%s failed: %s' %
                            (self.host, self.port, errno.errorcode.get(rc)))
        raise error or OSError('no address for %s' % self.host)

    def fileno(self) -> int:
        return self.sock.fileno()

    def queued(self) -> int:
        """Bytes in the kernel's send queue, not yet sent (0 if unknown)."""
        try:
            return _struct.unpack('i', _fcntl.ioctl(
                self.sock.fileno(), _TIOCOUTQ, b'\0\0\0\0'))[0]
        except (OSError, AttributeError):
            return 0

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


class IOLoop:
    """The single native thread that runs every AMQP connection's I/O."""

    def __init__(self, name: str) -> None:
        self._calls = collections.deque()
        self._timers = []
        self._seq = itertools.count()
        self._conns = set()  # Controllers: fileno() and the io_* methods
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # a wake-up byte is on its way: later calls need not send one
        self._wake_pending = False
        # lazy calls expected, when the last was announced, and when the
        # loop next runs its calls at the latest (0: it is running)
        self._expected = 0
        self._expected_at = 0.0
        self._awake_by = 0.0
        self._stopping = False
        self._ident = None
        self._pid = green.pid()
        # patched: a green loop (see the module docstring); log records of
        # native helpers go to this hub's green threads, and the bridge
        # knows the hub's OS thread
        self.green = patched_process()
        self._bridge = green.bridge() if self.green else None
        self._threads = _threading
        self._poller = poller.SelectPoller()
        if self.green:
            self._threads = __import__('threading')
            self._poller = poller.HubPoller()
        self._thread = self._threads.Thread(target=self._run, name=name,
                                            daemon=True)
        self._thread.start()
        self._ident = self._thread.ident

    # -- API for other threads -------------------------------------------

    def call_soon(self, fn, *args) -> None:
        """Run fn(*args) on the I/O thread (thread-safe).

        The loop runs every queued call before it next sleeps, so only the
        first call since its last wake-up sends a byte to wake it, and none
        from the I/O thread itself. A green thread of a green loop's hub
        has the hub resume the loop instead.
        """
        self._calls.append((fn, args))
        self._notify()

    def call_lazy(self, fn, args: tuple, urgent: bool = False) -> None:
        """Run fn(*args) on the I/O thread within LAZY_DELAY (thread-safe).

        For the settlement of a message handed out by a connection that
        called :meth:`expect_call`. While one is expected, the loop never
        sleeps longer than LAZY_DELAY, so the call waits for its next pass
        instead of waking it with a byte: the reader of the next message
        settles this one. The wake-up byte of a native loop costs the I/O
        thread a pass and the caller a GIL hand-off per message. A green
        loop is woken at once (its wake-up is a hub call; lazy there too,
        paced CPU was 0.61-0.80 of the rabbit driver's against 0.60-0.80).
        An urgent call (its peer waits for it: the credit it gives back)
        wakes the loop as :meth:`call_soon` does.
        """
        self._calls.append((self._run_lazy, (fn, args)))
        # the loop publishes _awake_by before it looks at _calls one last
        # time: a call appended before this read is seen by that look
        if (not self.green and not urgent and
                self._awake_by - now() <= LAZY_DELAY):
            return
        self._notify()

    def _notify(self) -> None:
        """Have the loop run its queued calls (any thread but its own)."""
        if self._threads.get_ident() == self._ident:
            return
        if self.green and (_threading.get_ident() ==
                           self._bridge.os_thread):
            self._poller.wake()
            return
        self._wake()

    def _wake(self) -> None:
        """Send the loop a wake-up byte unless one is on its way."""
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._wake_w.send(b'x')
        except (BlockingIOError, InterruptedError):
            pass  # the socket is full of wake-up bytes
        except OSError:
            LOG.debug('I/O loop already closed')

    def start_helper(self, fn, name: str) -> None:
        """Run fn() on a new native thread that logs as the I/O thread does.

        For blocking work (RabbitMQ 3.x declarations, a TLS diagnosis);
        fn hands its result back with :meth:`call_soon`.
        """
        def run():
            green.io_thread_started(self._bridge)
            fn()
        _threading.Thread(target=run, daemon=True, name=name).start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread once pending calls ran; wait for it to end."""
        self.call_soon(self._set_stopping)
        if self._threads.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- API for the I/O thread ------------------------------------------

    def expect_call(self) -> None:
        """A message was handed out: its settlement will come lazily."""
        self._expected += 1
        self._expected_at = now()

    def _run_lazy(self, fn, args) -> None:
        if self._expected:
            self._expected -= 1
        fn(*args)

    def call_later(self, delay: float, fn) -> Timer:
        """Schedule fn() after delay seconds; returns a Timer."""
        timer = Timer(now() + max(0.0, delay), fn)
        heapq.heappush(self._timers, (timer.deadline, next(self._seq), timer))
        return timer

    def add_connection(self, conn) -> None:
        """Poll conn's socket from now on.

        A connection changes its socket only between remove_connection()
        and add_connection(): a poller may keep a socket's registration.
        """
        self._conns.add(conn)

    def remove_connection(self, conn) -> None:
        """Stop polling conn's socket."""
        self._conns.discard(conn)
        self._poller.forget(conn)

    def _set_stopping(self) -> None:
        self._stopping = True

    # -- the loop ---------------------------------------------------------

    def _forked(self) -> bool:
        """True in a forked child: stop without touching the parent's I/O.

        A native loop does not survive fork; a green one does, in the
        child's hub, and must neither read nor write the shared sockets.
        """
        if green.pid() == self._pid:
            return False
        self._stopping = True
        return True

    def _run_calls(self) -> None:
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:
                LOG.exception('Unexpected error in I/O thread call %s', fn)

    def _run_timers(self) -> float:
        timers = self._timers
        t = now()
        while timers and timers[0][0] <= t:
            timer = heapq.heappop(timers)[2]
            if not timer.cancelled:
                try:
                    timer.callback()
                except Exception:
                    LOG.exception('Unexpected error in timer %s',
                                  timer.callback)
        return timers[0][0] if timers else None

    def _run(self) -> None:
        if not self.green:
            green.io_thread_started(self._bridge)
        try:
            while not self._stopping:
                self._once()
        except Exception:
            LOG.exception('AMQP 1.0 I/O thread died')
        finally:
            if self._forked():
                self._poller.close(forked=True)
            else:
                self._closed()

    def _closed(self) -> None:
        """The loop ended: tell the connections, close the wake-up pair."""
        for conn in list(self._conns):
            conn.io_closed()
        self._poller.close()
        self._wake_r.close()
        self._wake_w.close()

    def _process(self, deadline):
        """Let every connection work and write what the socket takes.

        Returns (readers, writers, next deadline).
        """
        readers, writers = [self._wake_r], []
        for conn in list(self._conns):
            d = conn.io_process(now())
            if d and (deadline is None or d < deadline):
                deadline = d
            want_r, want_w = conn.io_wants()
            if want_w:
                # the socket takes it now, mostly: no trip through select
                conn.io_write()
                want_r, want_w = conn.io_wants()
            if want_r:
                readers.append(conn)
            if want_w:
                writers.append(conn)
        if self._timers and (deadline is None or
                             self._timers[0][0] < deadline):
            # a timer armed by a connection callback just now
            deadline = self._timers[0][0]
        return readers, writers, deadline

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        # after the drain: a call queued from now on sends a byte, one
        # queued before it is run by the next _run_calls
        self._wake_pending = False

    def _once(self) -> None:
        self._run_calls()
        if self._stopping:
            return
        readers, writers, deadline = self._process(self._run_timers())
        t = now()
        timeout = 5.0 if deadline is None else max(0.0, deadline - t)
        if (self._expected and timeout > LAZY_DELAY and not self.green and
                t - self._expected_at < LAZY_WINDOW):
            timeout = LAZY_DELAY   # a nap: a settlement is on its way
        self._awake_by = t + timeout
        if self._calls:
            timeout = 0
        try:
            r, w = self._poller.poll(readers, writers, timeout)
        except (OSError, ValueError):
            r = w = None
        self._awake_by = 0.0
        if r is None:
            # a socket went bad between io_wants and select: find it
            for conn in list(self._conns):
                conn.io_check()
            return
        if self._forked():
            return
        for conn in w:
            conn.io_write()
        for item in r:
            if item is self._wake_r:
                self._drain_wake()
            else:
                item.io_read()
