import json
import threading

import pytest

from lib_dbchar.cli import build_parser, main
from lib_dbchar.doctor import Check, Facts, check_onnxruntime_builds, check_packages, run_checks
from lib_dbchar.errors import DbcharError, JobStopped, NameRejected, TargetExists
from lib_dbchar.host.standalone import StandaloneHost
from lib_dbchar.jobs import JobContext, Progress
from lib_dbchar.projects import create_project, list_projects, open_project
from lib_dbchar.settings import Settings


def test_create_list_open_project(tmp_path):
    project = create_project(tmp_path, "Star Guardian/Neeko")
    assert project.root == tmp_path / "Star Guardian_Neeko"
    assert project.dataset_dir.is_dir() and project.classes_dir.is_dir() and project.runs_dir.is_dir()
    record = json.loads((project.root / "project.json").read_text())
    assert record["name"] == "Star Guardian/Neeko"
    (tmp_path / "not-a-project").mkdir()
    assert list_projects(tmp_path) == ["Star Guardian_Neeko"]
    assert open_project(tmp_path, "Star Guardian/Neeko") == project
    assert project.run_dir("../../evil").parent == project.runs_dir


def test_create_project_refuses_duplicates_and_bad_names(tmp_path):
    create_project(tmp_path, "neeko")
    with pytest.raises(TargetExists, match="neeko"):
        create_project(tmp_path, "neeko")
    with pytest.raises(NameRejected):
        create_project(tmp_path, "../..")
    with pytest.raises(DbcharError, match="No project at"):
        open_project(tmp_path, "ahri")
    assert list_projects(tmp_path / "missing") == []


def test_standalone_host_lists_models_and_resolves(tmp_path):
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "b.safetensors").write_bytes(b"")
    (models / "sub" / "A.ckpt").write_bytes(b"")
    (models / "notes.txt").write_text("")
    host = StandaloneHost(models, Settings(projects_dir=str(tmp_path / "p")), device="cpu", home=tmp_path)
    titles = [r.title for r in host.list_checkpoints()]
    assert titles == ["b.safetensors", "sub/A.ckpt"]
    assert host.find_checkpoint("A").path == models / "sub" / "A.ckpt"
    assert host.find_checkpoint("b.safetensors [abc123]").path == models / "b.safetensors"
    assert host.find_checkpoint("nothing") is None
    assert host.checkpoint_dir() == models
    assert host.projects_dir() == tmp_path / "p"
    assert StandaloneHost(models, home=tmp_path).projects_dir() == tmp_path / "dbchar"
    assert host.dtype() == "float32"


def test_standalone_job_progress_and_interrupt(tmp_path):
    host = StandaloneHost(tmp_path, device="cpu", home=tmp_path)
    seen: list[Progress] = []
    facts = Facts("standalone", "cpu", tmp_path, 0, tmp_path / "projects")

    def stop_after_two(p: Progress) -> None:
        seen.append(p)
        if p.done == 2:
            host.interrupt()

    with host.job("check", ui_progress=stop_after_two) as ctx, pytest.raises(JobStopped):
        run_checks(facts, ctx)
    assert [p.done for p in seen] == [0, 1, 2]
    assert all(p.total == 6 for p in seen)
    # A new job starts with the stop flag cleared.
    with host.job("check again") as ctx:
        report = run_checks(facts, ctx)
    assert len(report.checks) == 6


def test_standalone_gpu_lock_serialises(tmp_path):
    host = StandaloneHost(tmp_path, device="cpu", home=tmp_path)
    inside = threading.Event()
    release = threading.Event()
    order = []

    def first():
        inside.set()
        release.wait(5)
        order.append("first")

    def second():
        order.append("second")

    t1 = threading.Thread(target=host.wrap_gpu_call(first))
    t1.start()
    inside.wait(5)
    t2 = threading.Thread(target=host.wrap_gpu_call(second))
    t2.start()
    t2.join(0.2)
    assert order == []  # second waits for the lock
    release.set()
    t1.join(5)
    t2.join(5)
    assert order == ["first", "second"]


def test_doctor_reports_problems_plainly(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    facts = Facts("standalone", "cpu", tmp_path, 3, locked / "projects")
    report = run_checks(facts, JobContext())
    by_name = {c.name: c for c in report.checks}
    assert by_name["device"].ok and "cpu" in by_name["device"].detail
    assert "3 in the list" in by_name["checkpoints"].detail
    import os

    if os.geteuid() != 0:  # root can write anywhere
        assert not by_name["projects folder"].ok and "NOT writable" in by_name["projects folder"].detail
    assert report.as_text().startswith("dbchar ")


# What a complete venv holds (canonical names, as deps.read_installed gives them).
COMPLETE = {
    "torch": "2.1.2+cu121",
    "numpy": "1.26.2",
    "pillow": "9.5.0",
    "safetensors": "0.4.2",
    "transformers": "4.30.2",
    "accelerate": "0.21.0",
    "huggingface-hub": "0.36.2",
    "diffusers": "0.31.0",
    "onnxruntime": "1.23.2",
}


def test_doctor_package_checks_follow_the_dependency_policy():
    """The doctor judges with pyproject's list and ranges (lib_dbchar.deps), not a list of its own."""
    ok = check_packages(COMPLETE)
    assert ok.ok and ok.detail.startswith("torch 2.1.2+cu121, numpy 1.26.2, pillow 9.5.0")
    assert "onnxruntime" not in ok.detail  # it has its own check
    assert check_onnxruntime_builds(COMPLETE) == Check("onnxruntime", True, "onnxruntime 1.23.2")

    broken = {k: v for k, v in COMPLETE.items() if k != "diffusers"} | {"accelerate": "0.19.0"}
    bad = check_packages(broken)
    assert not bad.ok
    assert "diffusers is missing: training, class images and checkpoint conversion unavailable" in bad.detail
    assert "accelerate 0.19.0 is installed but dbchar needs accelerate>=0.21.0" in bad.detail
    assert "Found: torch 2.1.2+cu121" in bad.detail


def test_doctor_names_both_onnxruntime_builds_and_the_fix():
    both = check_onnxruntime_builds(COMPLETE | {"onnxruntime-gpu": "1.23.2"})
    assert not both.ok
    assert "onnxruntime 1.23.2 and onnxruntime-gpu 1.23.2 are both installed" in both.detail
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in both.detail
    assert check_packages(COMPLETE | {"onnxruntime-gpu": "1.23.2"}).ok  # reported once, by its own check
    gpu_only = {k: v for k, v in COMPLETE.items() if k != "onnxruntime"} | {"onnxruntime-gpu": "1.20.1"}
    assert check_onnxruntime_builds(gpu_only) == Check("onnxruntime", True, "onnxruntime-gpu 1.20.1")
    missing = check_onnxruntime_builds({k: v for k, v in COMPLETE.items() if k != "onnxruntime"})
    assert not missing.ok and "onnxruntime is missing: the WD14 tagger" in missing.detail


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("ui", "doctor", "demo"):
        assert command in out


def test_cli_doctor_runs(tmp_path, capsys):
    code = main(
        ["doctor", "--models-dir", str(tmp_path), "--projects-dir", str(tmp_path / "p"), "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert "[ok] device: cpu" in out
    assert "[ok] packages" in out
    assert code == 0
