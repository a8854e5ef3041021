"""Imported at start-up by a Python whose PYTHONPATH holds tests/hooks/ (tests/train_hooks.env):
installs the test hooks into fastft.train.trainer and fastft.export.llamacpp once imported, then runs the
sitecustomize this one shadows, if there is one."""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {"fastft.train.trainer": "install", "fastft.export.llamacpp": "install_export"}


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        sys.path.insert(0, os.path.dirname(HERE))   # tests/, for train_hooks
        import train_hooks
        getattr(train_hooks, TARGETS[module.__name__])(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in self.todo:
            return None
        self.todo.discard(name)
        if not self.todo:
            sys.meta_path.remove(self)   # each once: find the real module, wrap its loader
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = _Loader(spec.loader)
        return spec


_finder = _Finder()
_finder.todo = set(TARGETS)
sys.meta_path.insert(0, _finder)

_next = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != HERE])
if _next is not None and _next.loader is not None:
    _next.loader.exec_module(importlib.util.module_from_spec(_next))
