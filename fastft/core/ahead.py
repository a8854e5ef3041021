"""Work computed ahead of the one who takes it, in order: the export's writers.

A writer takes tensors one by one in the order of its file, while computing each (a merge, a
dtype cast, a quantization: torch and numpy, which release the GIL) can run in threads. `ahead`
keeps up to `depth` of them under way, so that at most `depth` finished results (and never the
whole model) are held at once.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def ahead(fn: Callable[[int], T], n: int, workers: int, depth: int) -> Iterator[Iterator[T]]:
    """fn(0), ..., fn(n - 1), yielded in that order; up to `depth` of them computed ahead by
    `workers` threads. Leaving the block cancels what has not started and waits for the rest."""
    futures: deque = deque()

    def results() -> Iterator[T]:
        submitted = 0
        for i in range(n):
            while submitted < min(n, i + max(depth, 1)):
                futures.append(pool.submit(fn, submitted))
                submitted += 1
            yield futures.popleft().result()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            yield results()
        finally:
            for f in futures:
                f.cancel()
