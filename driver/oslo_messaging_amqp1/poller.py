# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""How the I/O loop waits for its sockets: one poller per kind of loop.

Both have ``poll(readers, writers, timeout) -> (readable, writable)`` over
objects with ``fileno()``, ``forget(obj)`` for an object whose socket is
about to go, ``wake()`` and ``close()``.

- :class:`SelectPoller`, for a native loop: the original ``select``.
- :class:`HubPoller`, for a green loop: a native epoll set kept from pass
  to pass, watched by one listener of the eventlet hub that never leaves
  it. eventlet's green ``select``, used before, registers and unregisters
  every socket with the hub on every pass: in py-spy profiles of 4 green
  callers that was 10-13 % of the process's samples, plus 9 % in the
  hub's add and remove.
"""

import errno

from oslo_messaging_amqp1 import green

_select = green.original('select')

# Linux's values; monkey-patching deletes epoll from the select module
_IN, _OUT = 0x001, 0x004
# reported whether asked for or not: the next read or write says what
_BAD = 0x008 | 0x010  # EPOLLERR, EPOLLHUP


class SelectPoller:
    """A native loop's poller: select() on whatever it is given."""

    def poll(self, readers, writers, timeout):
        """Wait up to timeout seconds; the ready readers and writers."""
        r, w, _x = _select.select(readers, writers, [], timeout)
        return r, w

    def forget(self, obj) -> None:
        """Nothing is kept between passes."""

    def wake(self) -> None:
        """Other threads wake this loop through its wake-up socket."""

    def close(self, forked: bool = False) -> None:
        """Nothing to release."""


def _ignore(*_args) -> None:
    """A hub listener's throwback: our epoll set is never closed under us."""


class HubPoller:
    """A green loop's poller: an epoll set behind one hub listener.

    The loop's green thread parks in the hub; the hub wakes it when the
    epoll set is readable (one of our sockets is ready), at the timeout,
    or when :meth:`wake` asks from another green thread of the hub.
    A socket stays in the set until the loop stops asking for it or
    :meth:`forget` is called for its owner, which the loop does before a
    connection closes its socket: a new socket may reuse the number.
    """

    def __init__(self) -> None:
        from eventlet import hubs
        import greenlet
        self._getcurrent = greenlet.getcurrent
        self._hub = hub = hubs.get_hub()
        # the original module: patching deleted epoll from the one we hold
        # if this module was imported first
        self._epoll = green.original('select').epoll()
        self._watched = {}  # obj -> (fd, mask) as in the epoll set
        self._owner = {}  # fd -> obj
        # (park number, parked green thread) while the loop waits
        self._park = None
        self._parks = 0
        self._poked = None  # the park that wake() already scheduled for
        self._listener = hub.add(hub.READ, self._epoll.fileno(),
                                 self._on_ready, _ignore, None)

    def poll(self, readers, writers, timeout):
        """Wait up to timeout seconds; the ready readers and writers."""
        self._update(readers, writers)
        self._wait(timeout)
        r, w = [], []
        owner = self._owner
        for fd, events in self._epoll.poll(0):
            obj = owner.get(fd)
            if obj is None:
                continue
            mask = self._watched[obj][1]
            if mask & _IN and events & (_IN | _BAD):
                r.append(obj)
            if mask & _OUT and events & (_OUT | _BAD):
                w.append(obj)
        return r, w

    def _update(self, readers, writers) -> None:
        """Bring the epoll set in line with what the loop asks for."""
        wanted = dict.fromkeys(readers, _IN)
        for obj in writers:
            wanted[obj] = wanted.get(obj, 0) | _OUT
        watched = self._watched
        for obj, mask in wanted.items():
            fd = obj.fileno()
            old = watched.get(obj)
            if old == (fd, mask):
                continue
            if old is not None and old[0] != fd:
                self.forget(obj)
                old = None
            self._set(fd, mask, old is not None)
            watched[obj] = (fd, mask)
            self._owner[fd] = obj
        if len(watched) > len(wanted):
            for obj in [obj for obj in watched if obj not in wanted]:
                self.forget(obj)

    def _set(self, fd: int, mask: int, known: bool) -> None:
        """Register fd for mask, or change its mask."""
        epoll = self._epoll
        try:
            if known:
                epoll.modify(fd, mask)
            else:
                epoll.register(fd, mask)
        except FileNotFoundError:
            epoll.register(fd, mask)
        except FileExistsError:
            epoll.modify(fd, mask)

    def forget(self, obj) -> None:
        """Stop watching obj's socket (call before the socket closes)."""
        old = self._watched.pop(obj, None)
        if old is None:
            return
        fd = old[0]
        if self._owner.get(fd) is not obj:
            return  # the number is another socket's now
        del self._owner[fd]
        try:
            self._epoll.unregister(fd)
        except OSError as exc:
            # closed already: the kernel dropped it from the set
            if exc.errno not in (errno.ENOENT, errno.EBADF):
                raise

    def _wait(self, timeout) -> None:
        """Park the loop's green thread in the hub until something is up."""
        hub = self._hub
        self._parks += 1
        number = self._parks
        self._park = (number, self._getcurrent())
        timer = None
        if timeout is not None:
            timer = hub.schedule_call_global(timeout, self._resume, number)
        try:
            hub.switch()
        finally:
            self._park = None
            if timer is not None:
                timer.cancel()

    def _resume(self, number=None) -> None:
        """Hub callback: resume the loop if it is still in that park."""
        park = self._park
        if park is None or (number is not None and number != park[0]):
            return
        self._park = None
        park[1].switch()

    def _on_ready(self, _fd) -> None:
        """Hub callback: the epoll set is readable."""
        self._resume()

    def wake(self) -> None:
        """Resume a parked loop soon (a green thread of the same hub)."""
        park = self._park
        if park is None or self._poked == park[0]:
            return
        self._poked = park[0]
        self._hub.schedule_call_global(0, self._resume, park[0])

    def close(self, forked: bool = False) -> None:
        """Leave the hub and close the epoll set.

        In a forked child that kept its parent's hub, the hub's own epoll
        set is the parent's too: the listener is only disarmed there, as
        removing it would unregister the parent's.
        """
        if forked:
            self._listener.defang()
            return
        self._hub.remove(self._listener)
        self._epoll.close()
