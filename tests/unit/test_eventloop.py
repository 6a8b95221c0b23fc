# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The native I/O loop's lazy calls: settlements that need no wake-up."""

import random
import threading
import time

import pytest

from oslo_messaging_amqp1 import eventloop
from tests.unit import helpers


@pytest.fixture
def loop():
    """A native I/O loop that counts its wake-up bytes and passes."""
    lp = eventloop.IOLoop('test-io')
    lp.wakes = helpers.count_wakes(lp)
    lp.passes = 0
    once = lp._once

    def counted_once():
        lp.passes += 1
        once()
    lp._once = counted_once
    yield lp
    lp.stop()


def _on_loop(lp, fn, *args):
    """Run fn(*args) on the loop's thread and wait for it."""
    waiter = eventloop.Waiter()

    def run():
        fn(*args)
        waiter.set()
    lp.call_soon(run)
    waiter.wait(5)
    assert waiter.done()


def _settle_into_sleep(lp):
    """Let the loop finish what it was doing and go to sleep."""
    time.sleep(eventloop.LAZY_WINDOW + 0.05)


def _wakes_of_a_lazy_call(lp, urgent=False):
    """Make a lazy call, wait until it ran; the wake-up bytes it sent."""
    ran = threading.Event()
    wakes = len(lp.wakes)
    lp.call_lazy(ran.set, (), urgent=urgent)
    # an idle loop sleeps 5 s: only a wake-up byte gets it there sooner
    assert ran.wait(2.0)
    return len(lp.wakes) - wakes


def test_a_lazy_call_wakes_an_idle_loop(loop):
    _settle_into_sleep(loop)
    assert _wakes_of_a_lazy_call(loop) == 1


def test_a_lazy_call_rides_the_next_pass_while_one_is_expected(loop):
    _settle_into_sleep(loop)
    _on_loop(loop, loop.expect_call)
    assert _wakes_of_a_lazy_call(loop) == 0


def test_an_urgent_lazy_call_wakes_the_loop(loop):
    """A settlement whose peer has no credit left does not wait."""
    _settle_into_sleep(loop)
    _on_loop(loop, loop.expect_call)
    assert _wakes_of_a_lazy_call(loop, urgent=True) == 1


def test_a_held_message_stops_the_naps(loop):
    """A message the consumer keeps: a few naps, then a wake-up byte."""
    _settle_into_sleep(loop)
    _on_loop(loop, loop.expect_call)
    passes = loop.passes
    time.sleep(0.3)
    naps = loop.passes - passes
    # about LAZY_WINDOW / LAZY_DELAY; napping on would give 150
    assert naps <= 2 * eventloop.LAZY_WINDOW / eventloop.LAZY_DELAY + 2
    assert _wakes_of_a_lazy_call(loop) == 1


def test_a_lazy_call_is_never_stranded(loop):
    """The loop publishes how long it sleeps before its last look.

    A consumer settles at random moments around the loop's naps and the
    end of its window, as it would while messages arrive; a settlement
    missed by that last look would wait for the 5 s idle sleep.
    """
    rnd = random.Random(12)
    slow = []
    for _i in range(300):
        loop.call_soon(loop.expect_call)
        time.sleep(rnd.uniform(0, 2.5 * eventloop.LAZY_WINDOW))
        ran = threading.Event()
        queued = eventloop.now()
        loop.call_lazy(ran.set, ())
        if not ran.wait(1.0):
            slow.append(eventloop.now() - queued)
    assert not slow, '%d lazy calls waited over 1 s' % len(slow)
