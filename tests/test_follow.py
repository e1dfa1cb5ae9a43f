"""`adapters/current` follows the study: fetched over real ssh/rsync (tests/sshd_node.py)
or repointed in a shared folder; and a `current` ahead of the study (a promotion killed
before it was recorded, a local rollback) is recorded only by compare-and-swap."""
from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

STUDY = "council-proxy-synthetic"


def _adapter(tmp: Path, exp_id: str) -> Path:
    (tmp / exp_id).mkdir(parents=True)
    (tmp / exp_id / "adapters.safetensors").write_bytes(exp_id.encode())
    return tmp / exp_id


def test_fetch_mode_copies_the_promoted_adapter_over_ssh(tmp_path):
    from sshd_node import SshNode, have_sshd
    if not have_sshd():
        pytest.skip("needs sshd, ssh and rsync (.ci/run installs them)")
    from study.follow import WorkerOptions, sync_current
    from study.promoter import Promoter, file_digests
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=STUDY, storage=url)
    remote = Promoter(tmp_path / "mini-adapters")          # the Mac Mini's own folder
    src = remote.promote(_adapter(tmp_path / "exp", "exp-x"), "exp-x")
    study.set_user_attr("baseline", {"id": "exp-x", "score": 0.7, "host": "mini", "adapter": str(src)})
    local = Promoter(tmp_path / "macbook-adapters")
    with SshNode(tmp_path / "ssh") as node:
        opts = WorkerOptions(adapters="fetch", ssh_config=str(node.ssh_config), hosts={"mini": node.alias})
        assert sync_current(study, local, opts) == "exp-x"
        assert local.current_id() == "exp-x" and file_digests(local.current()) == file_digests(src)
        assert local.list()[-1]["meta"]["followed_from"] == f"{node.alias}:{src}"
        node.kill()                                     # up to date: no ssh needed any more
        assert sync_current(study, local, opts) == "exp-x"
    shared = Promoter(tmp_path / "not-shared")
    from common.errors import ConfigError
    with pytest.raises(ConfigError, match="shared folder"):
        sync_current(study, shared, WorkerOptions(adapters="shared"), url)


def test_current_ahead_of_the_study_is_recorded_only_if_the_study_did_not_move(tmp_path):
    """A promotion killed between the swap and the study's attr, or a local rollback, is
    recorded in the study (compare-and-swap on what this machine's history says came
    before); if another worker promoted meanwhile, this machine follows the study instead."""
    from study.follow import WorkerOptions, reconcile_current, sync_current
    from study.promoter import Promoter
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=STUDY, storage=url)
    p = Promoter(tmp_path / "adapters")
    for x in "abc":
        p.promote(_adapter(tmp_path / "src", f"exp-{x}"), f"exp-{x}")     # published, current = exp-c
    study.set_user_attr("baseline", {"id": "exp-b", "score": 0.5})         # killed before recording exp-c
    assert reconcile_current(study, p, url)["id"] == "exp-c"
    assert study.user_attrs["baseline"]["previous"] == "exp-b"
    assert reconcile_current(study, p, url) is None                        # agreed: nothing to do
    p.rollback()                                                           # the user, on this machine
    assert reconcile_current(study, p, url)["id"] == "exp-b"
    p.promote(p.promoted / "exp-c", "exp-c")                               # current ahead again, but ...
    study.set_user_attr("baseline", {"id": "exp-a", "score": 0.4})         # ... another worker moved the study
    assert reconcile_current(study, p, url) is None
    assert sync_current(study, p, WorkerOptions("shared"), url) == "exp-a" == p.current_id()
    # Killed between the swap and history.json: the link is ahead of the history too.
    import shutil
    shutil.copytree(p.promoted / "exp-c", p.promoted / "exp-d")
    study.set_user_attr("baseline", {"id": "exp-a", "score": 0.4})
    os.symlink("promoted/exp-d", p.root / "current.new")
    os.replace(p.root / "current.new", p.link)
    assert p.history()[-1]["id"] == "exp-a"
    assert reconcile_current(study, p, url)["id"] == "exp-d"
