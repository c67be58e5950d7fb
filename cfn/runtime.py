"""Process-wide runtime settings shared by `cfn ingest` and `cfn worker`."""

from __future__ import annotations

import gc

# CPython collects its youngest generation every 700 container allocations by default. Both
# processes allocate a handful of short-lived containers per request or event and free them by
# reference counting (no cycles on the hot paths), so those collections find almost nothing and
# cost CPU on every request and event; rarer ones lose nothing.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Raise the collection thresholds and exempt everything allocated so far (modules,
    configuration) from future full collections."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.collect()
    gc.freeze()
