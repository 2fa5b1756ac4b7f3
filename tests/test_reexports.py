"""Lazy re-exports (:func:`convscope.lazy.lazy_getattr`) and the arrays-index look-up the
array-kind formats share (:func:`convscope.formats.base.key_meta`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from convscope.formats.base import key_meta
from convscope.lazy import lazy_getattr


def test_lazy_getattr_imports_on_first_use_and_caches():
    ns: dict = {}
    get = lazy_getattr("pkg.mod", {"dumps": ("json", "dumps"), "j": ("json", None)}, ns)
    assert get("dumps") is json.dumps
    assert get("j") is json
    assert ns == {"dumps": json.dumps, "j": json}
    with pytest.raises(AttributeError, match="module 'pkg.mod' has no attribute 'loads'"):
        get("loads")


def test_moved_names_still_resolve_to_their_new_home():
    import convscope as cs
    import convscope.store.reader as store_reader
    from convscope.formats import catalog, reader, structure

    assert cs.store.RunReader is reader.RunReader
    assert cs.store.TABLE_SOURCES is catalog.TABLE_SOURCES
    assert store_reader.PROFILE_SHARES is structure.PROFILE_SHARES
    assert cs.open_run is reader.open_run
    with pytest.raises(AttributeError, match="module 'convscope.store' has no attribute"):
        cs.store.no_such_name  # noqa: B018


def test_key_meta_is_the_first_row_of_the_key():
    idx = pd.DataFrame({"key": ["a", "b", "a"], "meta": [{"n": 1}, {"n": 2}, {"n": 3}]})
    assert key_meta(idx, "a") == {"n": 1}
    assert key_meta(idx, "b") == {"n": 2}
    assert key_meta(idx, "c") is None
    assert key_meta(idx.iloc[:0], "a") is None
