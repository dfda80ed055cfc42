"""Every fault scenario runs twice: on a quiet machine, and on a loaded one (`Load`: a
CPU-bound process per core and an fsync-heavy writer, started and stopped here).

`load_mode` is module-scoped and parametrised, so pytest runs a module's scenarios quiet,
then all of them again loaded, starting the load once; a module's cluster fixture that does
not ask for `load_mode` is shared by both rounds."""

from __future__ import annotations

import pytest

from tests.support.faults import Load

MODES = ("quiet", "loaded")


@pytest.fixture(scope="module", params=MODES)
def load_mode(request):
    if request.param == "quiet":
        yield "quiet"
        return
    load = Load().start()
    try:
        yield "loaded"
        assert load.alive(), "the injected load died before the scenarios ended"
    finally:
        load.stop()
