"""llama.cpp without GitHub: its full source ships inside the llama-cpp-python sdist on PyPI.

That one download gives us the real Qwen vocabulary (for the tiny test model), the real Qwen3
chat templates, `convert_hf_to_gguf.py` and the C++ sources of `llama-quantize` (built by
fastft.export.llamacpp).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .cache import building, cache_dir
from .errors import FastftError
from .procs import dying_with_parent
from .quiet import say


# The sdist whose vendored llama.cpp we build and whose vocab/templates the tiny model uses.
# Pinned: llama.cpp's converter must know Qwen3's pre-tokenizer hash, and a newer release may
# rename tools (0.3.36 has no `llama-cli` target, for instance).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"


class LlamaCppError(FastftError):
    """llama.cpp cannot be had, built or run."""


def llama_cpp_source() -> Path:
    """The vendored llama.cpp source tree, downloaded from PyPI once and cached.

    `FASTFT_LLAMA_CPP_SDIST` may name a local copy of the sdist tarball (for offline machines).
    """
    final = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    if (final / "convert_hf_to_gguf.py").exists():
        return final
    tarball = os.environ.get("FASTFT_LLAMA_CPP_SDIST")
    with tempfile.TemporaryDirectory() as dl:
        if not tarball:
            say(f"downloading llama.cpp's source, once: llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
                f" from PyPI (76 MB)")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
                   "--quiet", "-d", dl, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
            proc = subprocess.run(dying_with_parent(cmd), capture_output=True, text=True)
            found = sorted(Path(dl).glob("llama_cpp_python-*.tar.gz"))
            if proc.returncode != 0 or not found:
                raise LlamaCppError(
                    f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} from PyPI "
                    f"(needed for llama.cpp's sources); set FASTFT_LLAMA_CPP_SDIST to a local copy.\n"
                    f"{proc.stderr.strip()}")
            tarball = str(found[0])
        say(f"unpacking llama.cpp's source from {Path(tarball).name}")
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
        with building(final) as tmp, tarfile.open(tarball) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and (m.isfile() or m.isdir()):
                    m.name = m.name[len(prefix):]
                    if m.name:
                        members.append(m)
            tar.extractall(tmp, members=members, filter="data")
    return final
