"""The reproducible install: constraints.txt pins what install.sh installs, the venv the tests
run in matches it, and the README's version table says the same. (That two fresh installs from
the lock agree was checked by installing twice and comparing `pip freeze`; too slow for here.)"""

from __future__ import annotations

import importlib.metadata as md
import re
import shlex

from conftest import REPO

LOCK = REPO / "constraints.txt"
INSTALL = REPO / "install.sh"
REMOVED: set[str] = set()   # packages install.sh uninstalls after pip brought them (none now)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: not an exact pin: {line!r}"
            pins[norm(name)] = version
    return pins


def install_commands() -> list[list[str]]:
    """Every `pip install` line of install.sh, as words."""
    lines = [line.strip() for line in INSTALL.read_text().splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.startswith("pip install")]


def script_pins() -> dict[str, str]:
    """NAME==VERSION that install.sh gives pip itself (unsloth's two steps; the last one wins)."""
    pins = {}
    for cmd in install_commands():
        for word in cmd:
            name, sep, version = word.partition("==")
            if sep and not name.startswith("-"):
                pins[norm(name)] = version
    return pins


def test_every_pin_is_installed_at_its_version():
    wrong = {}
    for name, version in lock_pins().items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        if name in REMOVED:
            assert installed is None, f"{name} should have been removed by install.sh"
        elif installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"lock vs installed (reinstall: bash install.sh): {wrong}"


def test_the_lock_pins_everything_install_sh_names():
    named = {norm(re.split(r"[<>=!~ ]", w)[0]) for cmd in install_commands() for w in cmd[2:]
             if not w.startswith(("-", "$", "\"$")) and w != "."}
    unpinned = named - set(lock_pins()) - set(script_pins())
    assert not unpinned, f"install.sh installs {sorted(unpinned)} without a pin: add them to the lock"


def test_unsloth_is_pinned_once_and_installed():
    pins = script_pins()
    assert pins["unsloth"] == pins["unsloth_zoo"] == md.version("unsloth") == md.version("unsloth_zoo")
    assert "unsloth" not in lock_pins()   # two steps through 2026.10.7: a lock pin would block them
    assert f"unsloth=={pins['unsloth']}" in md.requires("fastft")


def test_install_sh_uses_the_lock():
    constrained = [cmd for cmd in install_commands() if any("C[@]" in w for w in cmd)]
    assert len(constrained) >= 4   # pip itself, torch, unsloth's dependencies, fastft's
    assert 'C=(-c "$LOCK")' in INSTALL.read_text()


def test_the_readme_states_the_installed_versions():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\w[\w.-]*) \| (\d[^ |]*)", install, flags=re.M))
    assert {"torch", "unsloth", "transformers", "trl"} <= set(rows)
    pins = lock_pins() | script_pins()
    assert {name: version for name, version in rows.items()} == {
        name: pins[norm(name)] for name in rows}
