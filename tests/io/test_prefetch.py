"""moda.io.prefetch: the next item is prepared in a background thread, in order, errors raised where they belong, and
the thread gone when the caller stops."""

import contextlib
import threading

import pytest

from moda.io.prefetch import prefetched


def prefetch_threads() -> list:
    return [thread for thread in threading.enumerate() if thread.name.startswith("moda-prefetch")]


def test_every_item_is_prepared_once_in_order_in_another_thread():
    callers = set()

    def prepare(x):
        callers.add(threading.get_ident())
        return x * x

    assert list(prefetched(range(40), prepare)) == [x * x for x in range(40)]
    assert callers and threading.get_ident() not in callers
    assert list(prefetched([], prepare)) == []
    assert not prefetch_threads()


def test_the_next_item_is_prepared_while_the_caller_holds_this_one_and_no_further():
    started = [threading.Event() for _ in range(6)]

    def prepare(x):
        started[x].set()
        return x

    for x in prefetched(range(6), prepare):
        # item x+1 is prepared while the caller still holds x (the overlap) ...
        if x + 1 < 6:
            assert started[x + 1].wait(timeout=30), f"item {x + 1} was not prepared while the caller held item {x}"
        # ... and nothing beyond it: two prepared items at most, the one held and the next
        assert not any(event.is_set() for event in started[x + 2:])


@pytest.mark.parametrize("where", ["prepare", "iterable"])
def test_an_error_in_the_worker_is_raised_at_its_item_and_the_thread_ends(where):
    def items():
        for x in range(10):
            if where == "iterable" and x == 3:
                raise ValueError("row 3 has no id")
            yield x

    def prepare(x):
        if where == "prepare" and x == 3:
            raise ValueError("row 3: not a readable image")
        return x

    received = []
    with pytest.raises(ValueError, match="row 3") as raised:
        for x in prefetched(items(), prepare):
            received.append(x)
    assert received == [0, 1, 2]
    assert raised.value.__traceback__ is not None
    assert not prefetch_threads()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_caller_that_stops_early_leaves_no_thread_running(stop):
    prepared = []
    batches = prefetched(range(1000), lambda x: prepared.append(x) or x)
    with pytest.raises(stop), contextlib.closing(batches):
        for x in batches:
            if x == 2:
                raise stop()  # e.g. Ctrl-C while the model works on item 2
    assert not prefetch_threads()
    assert len(prepared) <= 4  # the item held, the one being prepared: never the rest of the catalog


def test_a_long_prepare_hears_that_the_caller_stopped_and_gives_up():
    stopping = threading.Event()
    gave_up = threading.Event()

    def prepare(x):  # item 1 stands for a batch of slow downloads, checking `stopping` between them
        if x == 1:
            if stopping.wait(timeout=60):
                gave_up.set()
        return x

    batches = prefetched(range(3), prepare, stopping)
    with pytest.raises(KeyboardInterrupt), contextlib.closing(batches):
        for _ in batches:
            raise KeyboardInterrupt()  # Ctrl-C at item 0, item 1 being prepared
    assert gave_up.is_set() and not prefetch_threads()  # closing told the prepare, and did not wait out its minute
