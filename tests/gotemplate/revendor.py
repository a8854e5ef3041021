"""Rebuild tests/gotemplate/vendor/ from git clones of the upstream repositories (a maintainer's
tool; CI never runs it: the vendored tree is committed, and `go build -mod=vendor` needs no
network).

    python tests/gotemplate/revendor.py MIRRORS

MIRRORS holds one git clone per repository, named OWNER+NAME/repo (e.g. ollama+ollama/repo), each
with the tag or commit below. It writes what `go mod vendor` would for the packages main.go
imports, at the versions ollama's go.mod pins: each needed package's non-test .go files (plus the
files ollama's template package embeds), each module's license files, and vendor/modules.txt.
One deliberate subset: ollama's api package is vendored without api/client.go (the HTTP client,
which imports ollama's auth package and so golang.org/x/crypto/ssh); main.go uses only the types
of api/types.go.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"

OLLAMA_COMMIT = "fb30760996871fa9460115c753afd2c60d4ab0f7"   # main, 2026-08-22 (after v0.33.0-rc2)
OLLAMA_VERSION = "v0.0.0-20260822014822-fb3076099687"

# module path, version, clone, git revision, go directive of its go.mod, packages (dirs in the repo),
# explicit (required by our go.mod directly)
MODULES = [
    ("github.com/agnivade/levenshtein", "v1.1.1", "agnivade+levenshtein", "v1.1.1", "1.13", [""]),
    ("github.com/bahlo/generic-list-go", "v0.2.0", "bahlo+generic-list-go", "v0.2.0", "1.18", [""]),
    ("github.com/buger/jsonparser", "v1.1.1", "buger+jsonparser", "v1.1.1", "1.13", [""]),
    ("github.com/google/uuid", "v1.6.0", "google+uuid", "v1.6.0", None, [""]),
    ("github.com/mailru/easyjson", "v0.7.7", "mailru+easyjson", "v0.7.7", "1.12", ["buffer", "jwriter"]),
    ("github.com/ollama/ollama", OLLAMA_VERSION, "ollama+ollama", OLLAMA_COMMIT, "1.26.0",
     ["api", "envconfig", "internal/orderedmap", "parser", "template", "thinking", "types/model"]),
    ("github.com/wk8/go-ordered-map/v2", "v2.1.8", "wk8+go-ordered-map", "v2.1.8", "1.18", [""]),
    ("golang.org/x/mod", "v0.30.0", "golang+mod", "v0.30.0", "1.24.0", ["semver"]),
    ("golang.org/x/sync", "v0.17.0", "golang+sync", "v0.17.0", "1.24.0", ["errgroup"]),
    ("golang.org/x/text", "v0.30.0", "golang+text", "v0.30.0", "1.24.0",
     ["encoding", "encoding/internal", "encoding/internal/identifier", "encoding/unicode",
      "internal/utf8internal", "runes", "transform"]),
    ("gopkg.in/yaml.v3", "v3.0.1", "go-yaml+yaml", "v3.0.1", None, [""]),
]
LICENSES = ("LICENSE", "License.txt", "NOTICE", "PATENTS")
LEFT_OUT = {"github.com/ollama/ollama": {"api/client.go"}}
EMBEDDED = {"template": (".gotmpl", ".json")}   # ollama's template package go:embeds these


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def main(mirrors: Path) -> None:
    shutil.rmtree(VENDOR, ignore_errors=True)
    lines = []
    for module, version, clone, rev, go, packages in MODULES:
        repo = mirrors / clone / "repo"
        names = git(repo, "ls-tree", "-r", "--name-only", rev).splitlines()
        root = VENDOR / module
        wanted = [n for n in names if n in LICENSES]
        for pkg in packages:
            prefix = f"{pkg}/" if pkg else ""
            for n in names:
                rest = n[len(prefix):]
                if not n.startswith(prefix) or "/" in rest or n in LEFT_OUT.get(module, ()):
                    continue
                if (rest.endswith(".go") and not rest.endswith("_test.go")) or \
                        rest.endswith(EMBEDDED.get(pkg, ())):
                    wanted.append(n)
        for n in wanted:
            data = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{n}"], check=True,
                                  capture_output=True).stdout
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            (root / n).write_bytes(data)
        lines.append(f"# {module} {version}")
        lines.append("## explicit" + (f"; go {go}" if go else ""))
        lines += [f"{module}/{p}" if p else module for p in packages]
    (VENDOR / "modules.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
