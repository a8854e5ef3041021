"""Imported at start-up by every Python process the tests start (tests/conftest.py puts this
folder on PYTHONPATH): the garbage collector's first threshold raised from 700 to 100,000 new
objects, then the sitecustomize this one shadows, if there is one.

Importing Unsloth, torch and transformers makes about 600,000 objects that live as long as the
process and next to no garbage, and at the default thresholds each import triggers collection
after collection that scans them all again: 1.4 s of a fresh `fastft train`'s 7 s import on
2 cores, 0.5 s of a direct export child's torch and transformers (measured with `import gc;
gc.freeze()` at exit, as fastft.cli and fastft.export.direct do). The suite starts dozens of
such processes. Collections still happen, only less often; what a process computes, prints or
writes does not change. (tests/conftest.py and tests/forkserver.py disable the collector while
importing instead: they know where their imports end.)

Since 2026-12-06 fastft does that itself for those imports (fastft.core.models.heavy_imports),
and this threshold no longer shortens `import fastft.cli, fastft.train.trainer` measurably
(5.2-6.1 s with it, 5.0-5.4 s without, three runs each); it still covers what fastft does not
wrap, such as llama.cpp's converter process importing torch.
"""

import gc
import importlib.machinery
import importlib.util
import os
import sys

gc.set_threshold(100_000, 50, 100)

# Only the folders after this one: tests/hooks/sitecustomize.py, earlier on a fault test's
# path, runs this one as the one it shadows.
_here = os.path.dirname(os.path.abspath(__file__))
_after = next((i + 1 for i, p in enumerate(sys.path) if os.path.abspath(p or ".") == _here), 0)
_next = importlib.machinery.PathFinder.find_spec("sitecustomize", sys.path[_after:])
if _next is not None and _next.loader is not None:
    _next.loader.exec_module(importlib.util.module_from_spec(_next))
