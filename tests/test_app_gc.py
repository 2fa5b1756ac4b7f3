"""The server keeps its long-lived heap out of full garbage collections (``LongLived``): a full
collection used to walk dash, plotly's validators, torch and a loaded model on about one request
in ten (a ResNet-50 run's layer panel: ~320 ms of CPU instead of ~90 ms)."""

from __future__ import annotations

import gc
import weakref

import pytest

from convscope.app.server import LongLived


@pytest.fixture
def keeper():
    served = []

    def app(environ, start_response):
        served.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ok"]

    k = LongLived(app, every=0)  # no thread: the tests call refreeze themselves
    k.served = served
    yield k
    if k._on_gc in gc.callbacks:
        gc.callbacks.remove(k._on_gc)
    gc.unfreeze()


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the collector frees it


def _call(k, path="/"):
    return list(k({"PATH_INFO": path}, lambda *a: None))


def test_install_freezes_what_lives_and_requests_pass_through(keeper):
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    keeper.install(thread=False)
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # this test process's modules, functions, classes...
    assert _call(keeper, "/model") == [b"ok"] and keeper.served == ["/model"]
    # a full collection leaves a freeze pending; the request under way freezes its survivors
    young = [Node() for _ in range(50)]
    gc.collect(2)
    assert keeper.pending
    _call(keeper)
    assert not keeper.pending and gc.get_freeze_count() >= frozen + 50
    del young


def test_a_frozen_cycle_that_dies_is_freed_by_the_periodic_refreeze(keeper):
    keeper.install(thread=False)
    node = Node()
    gone = []
    ref = weakref.ref(node, lambda r: gone.append(True))
    gc.collect()
    gc.freeze()  # as after a full collection: the cycle is now in the permanent generation
    del node
    gc.collect()
    assert ref() is not None and not gone  # frozen: a collection does not look at it
    keeper.refreeze()
    assert ref() is None and gone == [True]  # unfrozen, collected, the rest frozen again
    assert gc.get_freeze_count() > 1000


def test_the_periodic_thread_starts_once(keeper):
    k = LongLived(keeper.wsgi, every=3600)
    k.start()
    t = k._thread
    k.start()
    assert t is not None and t.is_alive() and t.daemon and k._thread is t
