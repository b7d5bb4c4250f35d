"""Preparing the next piece of work in a background thread while the caller works on the current one: what lets
`moda caption` read, decode and preprocess batch i+1 while the model describes batch i (torch releases the GIL in
its kernels, PIL while it decodes and resizes)."""

import threading
from concurrent.futures import ThreadPoolExecutor

_END = object()


def prefetched(iterable, prepare, stopping: threading.Event = None):
    """
    Yields prepare(x) for each x of `iterable`, in order, with the next one's prepare (and the iterable's own next
    step) already running in one background thread: at most two prepared results exist at a time, the one yielded
    and the one being made. An exception raised by the iterable or by prepare is raised here, at the item it belongs
    to, with its own type and traceback. When the caller stops early (break, an error, Ctrl-C), the work already
    started is finished and the thread ends before this generator does: call close() on it, or let it run out.
    `stopping`, an Event that this sets when the caller stops: a long prepare (a batch of slow downloads) that checks
    it between its steps gives up at once rather than keep a Ctrl-C waiting (what it returns then is never yielded).
    """
    items = iter(iterable)

    def prepare_next():
        for item in items:  # the iterable is only ever advanced in the worker, one step at a time
            return prepare(item)
        return _END

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="moda-prefetch") as worker:
        pending = worker.submit(prepare_next)
        try:
            while (prepared := pending.result()) is not _END:
                pending = worker.submit(prepare_next)
                yield prepared
        finally:
            if stopping is not None:
                stopping.set()
