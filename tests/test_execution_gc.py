"""``frozen_garbage``: MultiProc's per-pass ``gc.collect()`` skips the objects of the start-up."""

import gc
import weakref

import pytest

from tmstarget.execution import frozen_garbage


class _Cycle:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self):
        self.me = self


def _dropped_cycle():
    cycle = _Cycle()
    return weakref.ref(cycle)


def test_start_up_objects_are_frozen_and_new_garbage_is_still_collected():
    assert gc.get_freeze_count() == 0
    before = _dropped_cycle()  # garbage made before the block: freed by its first collection
    kept = _Cycle()            # alive before the block: frozen, never walked by a collection
    with frozen_garbage():
        assert before() is None
        assert gc.get_freeze_count() > 1000  # modules, functions, ... of this process
        assert all(obj is not kept for obj in gc.get_objects())  # out of every generation
        during = _dropped_cycle()
        gc.collect()  # what MultiProc calls before each pass
        assert during() is None  # garbage made while the graph runs is still freed
    assert gc.get_freeze_count() == 0
    assert any(obj is kept for obj in gc.get_objects())


def test_unfrozen_after_an_error():
    with pytest.raises(RuntimeError), frozen_garbage():
        raise RuntimeError("a failed step")
    assert gc.get_freeze_count() == 0
