"""fastft works from an installed wheel, not only from a checkout: the demo's data and the lock
`fastft doctor` reads are package data. The wheel is installed into a fresh virtual environment
whose only other path is this venv's site-packages (for torch, Unsloth and the rest), run from a
folder outside the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("fastft-*.whl"))
    env = tmp / "venv"
    venv.create(env, with_pip=False)
    py = env / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    # pip --target writes no console script: make the one `pip install` would.
    script = env / "bin" / "fastft"
    script.write_text(f"#!{py}\nimport sys\nfrom fastft.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return env


def run(env: Path, *args, cwd) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(env / "bin" / "fastft"), *args], cwd=cwd, capture_output=True,
                          text=True, env=clean | {"COLUMNS": "200"}, timeout=600)


@pytest.mark.slow
def test_the_wheel_holds_the_demo_data_and_the_lock(installed, tmp_path):
    where = run(installed, "--version", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    probe = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import fastft.demo as d, fastft.doctor as doc; "
                            "print(d.DEMO_DATA); print(doc.LOCK); print(doc.locked_versions()['torch'])"],
                           cwd=tmp_path, capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    data, lock, torch_pin = probe.stdout.splitlines()
    assert str(REPO) not in data and str(REPO) not in lock   # not the checkout's files
    assert f"torch=={torch_pin}" in (REPO / "constraints.txt").read_text()
    assert Path(data).read_bytes() == (REPO / "examples" / "favorite_color.jsonl").read_bytes()


@pytest.mark.slow
def test_demo_help_and_doctor_json_run_from_the_wheel(installed, tmp_path):
    demo = run(installed, "demo", "--help", cwd=tmp_path)
    assert demo.returncode == 0 and "tiny model" in demo.stdout, demo.stderr
    doctor = run(installed, "doctor", "--json", cwd=tmp_path)
    assert doctor.returncode in (0, 1), doctor.stderr[-2000:]    # 1: training cannot run here
    rows = {row["name"]: row for row in json.loads(doctor.stdout)["checks"]}
    assert rows["torch"]["status"] in ("ok", "warn") and rows["torch"]["value"]
