"""`fastft doctor`: its JSON, its exit code (1 only when training cannot run) and its probes."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

import fastft.doctor as doctor
from fastft.cli import main

ROWS = {"python", "gpu", "driver / CUDA", "llama.cpp", "ollama", "free disk", "HF cache",
        "offline mode", *doctor.PACKAGES}


REAL_IMPORT_CHECK = doctor.import_errors


@pytest.fixture(autouse=True)
def no_import_check(monkeypatch):
    """The import check runs in a process of its own and imports Unsloth (seconds): the tests
    that are not about it skip it; those that are put the real one back."""
    monkeypatch.setattr(doctor, "import_errors", lambda modules: {})


def run_doctor(*args: str):
    return CliRunner().invoke(main, ["doctor", *args])


def checks(result) -> dict[str, dict]:
    data = json.loads(result.stdout)   # stdout is JSON and nothing else
    return {c["name"]: c for c in data["checks"]}


def test_json_shape():
    result = run_doctor("--json")
    data = json.loads(result.stdout)
    assert set(data) == {"ok", "checks", "versions"}
    assert ROWS <= {c["name"] for c in data["checks"]}
    for c in data["checks"]:
        assert set(c) == {"name", "status", "value", "hint"}
        assert c["status"] in doctor.STATUSES
        assert c["status"] == "ok" or c["hint"], f"a {c['status']} row says what to do: {c}"
    assert data["versions"]["torch"] == md.version("torch")
    assert data["versions"]["unsloth"] == md.version("unsloth")
    by_name = checks(result)
    assert by_name["transformers"]["value"] == md.version("transformers")


def test_this_cpu_machine_can_train(monkeypatch):
    """No GPU is a warning, not a failure: the tiny model trains on CPU. (The real import check.)"""
    import torch

    monkeypatch.setattr(doctor, "import_errors", REAL_IMPORT_CHECK)

    result = run_doctor("--json")
    assert result.exit_code == 0, result.output
    gpu = checks(result)["gpu"]
    if not torch.cuda.is_available():
        assert gpu["status"] == "warn" and "CUDA GPU" in gpu["hint"]
    monkeypatch.setattr(doctor, "import_errors", lambda modules: {})
    assert "ready to train" in run_doctor().stdout


def test_the_import_check_names_what_fails():
    errors = REAL_IMPORT_CHECK(["json", "no_such_module_for_doctor"])
    assert list(errors) == ["no_such_module_for_doctor"]
    assert errors["no_such_module_for_doctor"].startswith("ModuleNotFoundError")


def test_a_package_that_fails_to_import_fails(monkeypatch):
    monkeypatch.setattr(doctor, "import_errors",
                        lambda modules: {"trl": "ImportError: cannot import name 'x'"})
    result = run_doctor("--json")
    assert result.exit_code == 1
    row = checks(result)["trl"]
    assert row["status"] == "fail" and "`import trl` fails: ImportError" in row["hint"]


@pytest.mark.parametrize("package", ["trl", "torch", "unsloth"])
def test_a_missing_package_fails(monkeypatch, package):
    real = doctor.package_version
    monkeypatch.setattr(doctor, "package_version", lambda n: None if n == package else real(n))
    result = run_doctor("--json")
    assert result.exit_code == 1
    row = checks(result)[package]
    assert row["status"] == "fail" and row["value"] == "not installed"
    assert "install.sh" in row["hint"]
    assert json.loads(result.stdout)["ok"] is False
    table = run_doctor()
    assert table.exit_code == 1 and "training cannot run here" in table.stdout


def test_a_version_outside_the_pins_fails(monkeypatch):
    real = doctor.package_version
    monkeypatch.setattr(doctor, "package_version", lambda n: "1.16.0" if n == "trl" else real(n))
    result = run_doctor("--json")
    assert result.exit_code == 1
    row = checks(result)["trl"]
    assert row["status"] == "fail" and "trl<=1.15.0" in row["hint"].replace(",>=0.22", "")


def test_a_version_other_than_the_lock_warns(tmp_path, monkeypatch):
    lock = tmp_path / "constraints.txt"
    lock.write_text(f"# a comment\npeft==0.17.0\ntorch=={md.version('torch')}\n")
    monkeypatch.setattr(doctor, "LOCK", lock)
    by_name = checks(run_doctor("--json"))
    assert by_name["peft"]["status"] == "warn" and "0.17.0" in by_name["peft"]["hint"]
    assert by_name["torch"]["status"] == "ok"


def test_ollama_on_path(tmp_path, monkeypatch):
    fake = tmp_path / "ollama"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    row = checks(run_doctor("--json"))["ollama"]
    assert row == {"name": "ollama", "status": "ok", "value": str(fake), "hint": ""}


def test_a_gpu_torch_cannot_use_names_the_driver_asking_nvidia_smi_once(tmp_path, monkeypatch):
    """A driver (nvidia-smi on PATH) but a torch without CUDA: both rows give the driver, and
    nvidia-smi, which may take up to its 20 s timeout, runs once."""
    import torch

    calls = tmp_path / "calls"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f'#!/bin/sh\necho call >> "{calls}"\necho 555.42\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu, driver = doctor._torch_checks()
    assert (gpu.status, gpu.value) == ("warn", "NVIDIA GPU present, but torch cannot use it")
    assert ", driver 555.42: install a torch build" in gpu.hint
    assert driver.value.startswith("driver 555.42; torch built for")
    assert calls.read_text().splitlines() == ["call"]


def test_ollama_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))   # nothing there
    row = checks(run_doctor("--json"))["ollama"]
    assert row["status"] == "warn" and "ollama.com" in row["hint"]


@pytest.mark.parametrize("env, shown", [({}, "off"), ({"HF_HUB_OFFLINE": "1"}, "on (HF_HUB_OFFLINE)")])
def test_offline_mode(monkeypatch, env, shown):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert checks(run_doctor("--json"))["offline mode"]["value"] == shown


def test_hf_cache_path_and_size(tmp_path, monkeypatch):
    (tmp_path / "models--x").mkdir()
    (tmp_path / "models--x" / "w.bin").write_bytes(b"0" * (2**20))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert checks(run_doctor("--json"))["HF cache"]["value"] == f"{tmp_path} (0.0 GiB)"


def test_the_lock_parser_reads_only_pins():
    text = Path(doctor.LOCK).read_text() if doctor.LOCK.is_file() else ""
    pins = doctor.locked_versions()
    assert len(pins) == sum(1 for line in text.splitlines() if "==" in line.split("#")[0])
    assert pins.get("torch") == md.version("torch")
