"""The code's shape: no import cycles, short functions, Unsloth imported first, and one owner
for every option (a changed TrainConfig default shows in --help, --print-config and fastft.json)."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import EXAMPLE, REPO

PACKAGE = REPO / "fastft"
MAX_FUNCTION_LINES = 60


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """fastft module -> the fastft modules it imports, at the top or inside functions alike
    (a lazy import hides a cycle from Python, not from this test)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0]
                    base = f"{parent}.{base}" if base else parent
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_fastft_has_no_import_cycle():
    graph = import_graph()
    assert "fastft.train.trainer" in graph and "fastft.core.run" in graph["fastft.train.trainer"]  # the parser sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# The pipeline, in order: a module of a stage imports only core and the stages before its own.
# The command line (fastft.cli, demo, doctor) sits on top and may import any stage.
STAGES = ("core", "data", "train", "export", "serve")


def stage_of(module: str) -> int | None:
    if module == "fastft":
        return 0                             # the package itself: its version, nothing else
    part = module.split(".")[1] if module.count(".") else None
    return STAGES.index(part) if part in STAGES else None


def stage_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        own = stage_of(module)
        if own is None:
            continue
        for dep in sorted(deps):
            theirs = stage_of(dep)
            if theirs is None or theirs > own:
                bad.append(f"{module} imports {dep}")
    return bad


def test_every_stage_imports_only_core_and_earlier_stages():
    graph = import_graph()
    assert {stage_of(m) for m in graph} >= set(range(len(STAGES)))   # every stage has modules
    assert stage_violations(graph) == []


def test_the_stage_rule_catches_an_import_against_the_flow():
    assert stage_violations({"fastft.core.models": {"fastft.export.llamacpp"},
                             "fastft.serve.chat": {"fastft.export.pipeline"},
                             "fastft.data.read": {"fastft.cli"}}) == [
        "fastft.core.models imports fastft.export.llamacpp", "fastft.data.read imports fastft.cli"]


def test_the_readme_tree_lists_every_module():
    """The README's folder tree and stage table say what the folders hold."""
    readme = (REPO / "README.md").read_text()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "__init__.py":
            assert f"{path.stem}.py" in readme, f"README's tree lacks {path.relative_to(REPO)}"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("module", ["fastft.train.trainer", "fastft.serve.chat", "fastft.export.pipeline", "fastft.demo"])
def test_modules_that_load_models_import_unsloth_before_transformers(module):
    """Unsloth patches transformers, peft and trl when imported; imported after them its fast paths
    are silently skipped. `fastft.core.models.import_unsloth` raises if the order is broken."""
    # sys.modules' order cannot tell (Unsloth re-registers itself); a finder on sys.meta_path
    # sees the order in which imports start.
    code = textwrap.dedent(f"""
        import sys
        started = []
        class Watch:
            def find_spec(self, name, path=None, target=None):
                if "." not in name and name not in started:
                    started.append(name)
        sys.meta_path.insert(0, Watch())
        import {module}
        first = started.index("unsloth") if "unsloth" in started else len(started)
        early = [m for m in ("transformers", "peft", "trl") if m in started[:first]]
        assert not early, f"imported before unsloth: {{early}}"
        import gc   # heavy_imports froze what Unsloth's import made (600k objects, not 0)
        assert "unsloth" not in started or gc.get_freeze_count() > 100_000, gc.get_freeze_count()
        # on a GPU, Unsloth was told to rewrite TRL's SFTTrainer alone (its CPU backend loads no
        # unsloth.models.rl); the finder that told it is gone
        import functools
        if rl := sys.modules.get("unsloth.models.rl"):
            only = rl.patch_trl_rl_trainers
            assert isinstance(only, functools.partial) and only.func is rl._patch_trl_rl_trainers \
                and only.args == ("sft_trainer",), only
        assert not any(type(f).__name__ == "_SFTTrainerOnly" for f in sys.meta_path)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_heavy_imports_run_without_the_collector_and_freeze_what_they_made():
    """fastft.core.models.heavy_imports: the collector off in the block (a gen-0 collection
    would have run after 700 new objects), on again after unless it was off before, and the
    objects made in the block frozen (later collections skip them)."""
    import gc

    from fastft.core.models import heavy_imports

    before = gc.get_freeze_count()
    with heavy_imports():
        assert not gc.isenabled()
        made = [[i] for i in range(10_000)]        # tracked objects, as an import makes
        assert gc.get_count()[0] >= 10_000            # none collected in the block
    assert gc.isenabled() and gc.get_freeze_count() >= before + len(made)
    gc.disable()
    try:
        with heavy_imports():
            pass
        assert not gc.isenabled()                    # the caller's choice is kept
    finally:
        gc.enable()


def test_heavy_imports_read_the_installed_packages_once(monkeypatch):
    """transformers and TRL each call importlib.metadata.packages_distributions() when imported;
    in heavy_imports the second call reuses the first's scan, each caller gets its own copy, and
    the function is itself again after the block."""
    import importlib.metadata as metadata

    from fastft.core.models import heavy_imports

    scans = []

    def scan():
        scans.append(1)
        return {"yaml": ["PyYAML"]}

    monkeypatch.setattr(metadata, "packages_distributions", scan)
    with heavy_imports():
        first = metadata.packages_distributions()
        first["yaml"].append("changed by its caller")
        second = metadata.packages_distributions()
    assert len(scans) == 1 and second == {"yaml": ["PyYAML"]}
    assert metadata.packages_distributions is scan


def test_unsloths_import_rewrites_the_sft_trainer_alone(tmp_path):
    """fastft.core.models._sft_trainer_only: an `unsloth.models.rl` shaped as Unsloth's (its
    PatchFastRL, run when `unsloth.models` is imported, calls patch_trl_rl_trainers, which
    rewrites every TRL trainer) rewrites sft_trainer alone when imported in the block, every
    trainer when imported outside it. The real module's binding is checked on import above; the
    GPU test compares the SFT trainer Unsloth generates with a full import's."""
    models = tmp_path / "unsloth" / "models"
    models.mkdir(parents=True)
    (tmp_path / "unsloth" / "__init__.py").write_text("")
    (models / "__init__.py").write_text("from .rl import PatchFastRL\nPatchFastRL()\n")
    (models / "rl.py").write_text(textwrap.dedent("""
        rewritten = []
        def _patch_trl_rl_trainers(trainer_file="grpo_trainer"):
            rewritten.append(trainer_file)
        def patch_trl_rl_trainers():
            for t in ("dpo_trainer", "grpo_trainer", "sft_trainer"):
                _patch_trl_rl_trainers(t)
        def PatchFastRL():
            patch_trl_rl_trainers()
    """))
    code = textwrap.dedent("""
        import sys
        from fastft.core.models import _sft_trainer_only
        sys.path.insert(0, sys.argv[1])
        with _sft_trainer_only():
            import unsloth.models
        print(unsloth.models.rl.rewritten)
        for m in [m for m in sys.modules if m.startswith("unsloth")]:
            del sys.modules[m]
        import unsloth.models
        print(unsloth.models.rl.rewritten)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["['sft_trainer']",
                                           "['dpo_trainer', 'grpo_trainer', 'sft_trainer']"]


def test_import_unsloth_refuses_a_late_import():
    code = "import transformers\nfrom fastft.core.models import import_unsloth\nimport_unsloth()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "imported before unsloth" in proc.stderr


@pytest.mark.slow
def test_a_changed_default_shows_in_help_print_config_and_the_run(tmp_path):
    """Change one TrainConfig default (rank 16 -> 24) and nothing else: --help, --print-config
    and a real run's fastft.json (and its adapter) all follow."""
    code = textwrap.dedent(f"""
        import json, re
        from fastft.core import config
        config.TrainConfig.model_fields["rank"].default = 24
        config.TrainConfig.model_rebuild(force=True)
        from click.testing import CliRunner
        from fastft.cli import main
        run = lambda *a: CliRunner().invoke(main, list(a), catch_exceptions=False)
        help_text = run("train", "--help").output
        printed = run("train", {str(EXAMPLE)!r}, "--print-config").output
        trained = run("train", {str(EXAMPLE)!r}, "--model", "tiny", "--max-steps", "1",
                      "--runs-dir", {str(tmp_path)!r}, "--name", "r24")
        print(json.dumps({{"help": re.search(r"--rank INT\\s+LoRA rank r\\. \\[default: (\\d+)\\]", help_text).group(1),
                           "printed": [l for l in printed.splitlines() if l.startswith("rank =")],
                           "exit": trained.exit_code}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"help": "24", "printed": ["rank = 24"], "exit": 0}
    record = json.loads((tmp_path / "r24" / "fastft.json").read_text())
    assert record["config"]["rank"] == 24
    adapter = json.loads((tmp_path / "r24" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 24
