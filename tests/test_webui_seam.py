"""The webui seam: scripts/dbchar.py loaded the webui's way, and WebuiHost over the fake webui."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import types

import pytest

from lib_dbchar.config import specs
from lib_dbchar.doctor import facts_from, run_checks
from lib_dbchar.errors import DbcharError, JobStopped
from lib_dbchar.host.webui import VERSION_ROUTE, WebuiHost, register
from lib_dbchar.jobs import Progress
from lib_dbchar.settings import WEBUI_OPTION_KEYS, Settings
from lib_dbchar.version import __version__
from tests.kit.webui import EXTENSION_ROOT, FAKE_WEBUI_DIR, load_extension_script, write_dummy_safetensors

WEBUI_HOST_FILE = EXTENSION_ROOT / "lib_dbchar" / "host" / "webui.py"


@pytest.fixture
def fake_build_ui(monkeypatch):
    """Stand in for lib_dbchar.ui.app (gradio-free): records the hosts build_ui() was given."""
    calls = []

    def build_ui(host):
        calls.append(host)
        return ("blocks", len(calls))

    module = types.ModuleType("lib_dbchar.ui.app")
    module.build_ui = build_ui
    monkeypatch.setitem(sys.modules, "lib_dbchar.ui.app", module)
    return calls


def _callback_counts(webui):
    return {k: len(v) for k, v in webui.script_callbacks.callback_map.items() if v}


# -- loading and registration ----------------------------------------------------------------------
def test_script_registers_tab_settings_and_route(fake_webui, fake_build_ui):
    path_before, path_object = list(sys.path), sys.path
    assert _callback_counts(fake_webui) == {}  # importing lib_dbchar registered nothing

    load_extension_script(EXTENSION_ROOT)

    assert sys.path is path_object and sys.path == path_before
    assert "dbchar.py" not in sys.modules
    assert _callback_counts(fake_webui) == {
        "callbacks_ui_settings": 1, "callbacks_ui_tabs": 1, "callbacks_app_started": 1,
    }
    widgets = fake_webui.build_settings()
    tabs = fake_webui.build_tabs()
    assert fake_webui.errors == []
    assert tabs == [(("blocks", 1), "dbchar", "dbchar")]
    assert len(fake_build_ui) == 1 and isinstance(fake_build_ui[0], WebuiHost)

    opts = fake_webui.shared.opts
    assert sorted(k for k in opts.data_labels if k.startswith("dbchar")) == sorted(WEBUI_OPTION_KEYS.values())
    for info in specs(Settings):
        key = WEBUI_OPTION_KEYS[info.name]
        option = opts.data_labels[key]
        assert option.section == ("dbchar", "dbchar")
        assert option.label == info.spec.label
        assert option.default == info.default == ""
        assert info.spec.help in option.comment_after
        assert widgets[key] == "Textbox"
        assert opts.data[key] == ""


def test_reload_ui_registers_again(fake_webui, fake_build_ui):
    seam = sys.modules["lib_dbchar.host.webui"]
    first = load_extension_script()
    assert [t[1:] for t in fake_webui.build_tabs()] == [("dbchar", "dbchar")]

    second = fake_webui.reload_ui()  # callbacks cleared, the script runs again, lib_dbchar stays

    assert second is not first
    assert sys.modules["lib_dbchar.host.webui"] is seam
    assert _callback_counts(fake_webui) == {
        "callbacks_ui_settings": 1, "callbacks_ui_tabs": 1, "callbacks_app_started": 1,
    }
    assert [t[1:] for t in fake_webui.build_tabs()] == [("dbchar", "dbchar")]
    assert len(fake_build_ui) == 2
    assert fake_webui.errors == []


def test_webui_loads_the_extension_from_its_extensions_folder(tmp_path):
    # A fresh interpreter where lib_dbchar is NOT on sys.path: only the webui's script loading can
    # make it importable, and only while scripts/dbchar.py runs.
    data = tmp_path / "webui"
    (data / "extensions").mkdir(parents=True)
    ext = data / "extensions" / "dbchar"
    ext.symlink_to(EXTENSION_ROOT, target_is_directory=True)
    code = textwrap.dedent(
        """
        import importlib.util, json, sys
        from modules import errors, script_callbacks, scripts
        result = {"findable_before": importlib.util.find_spec("lib_dbchar") is not None}
        import_time_callbacks = sum(map(len, script_callbacks.callback_map.values()))
        before = list(sys.path)
        scripts.load_scripts()
        import lib_dbchar.host.webui as seam
        result["lib_dbchar_file"] = sys.modules["lib_dbchar"].__file__
        result["path_unchanged"] = sys.path == before
        result["script_in_sys_modules"] = "dbchar.py" in sys.modules
        result["first"] = {k: len(v) for k, v in script_callbacks.callback_map.items() if v}
        scripts.load_scripts()  # Reload UI
        result["second"] = {k: len(v) for k, v in script_callbacks.callback_map.items() if v}
        result["same_package"] = sys.modules["lib_dbchar.host.webui"] is seam
        import lib_dbchar.doctor  # first imported now: resolves through the package, not sys.path
        result["late_import"] = lib_dbchar.doctor.__name__
        result["import_time_callbacks"] = import_time_callbacks
        result["errors"] = [m for m, _ in errors.reported]
        print("RESULT " + json.dumps(result))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDLINE_ARGS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(FAKE_WEBUI_DIR), DBCHAR_FAKE_WEBUI_DATA=str(data))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    expected_callbacks = {"callbacks_ui_settings": 1, "callbacks_ui_tabs": 1, "callbacks_app_started": 1}
    assert result == {
        "findable_before": False,
        "lib_dbchar_file": str(ext / "lib_dbchar" / "__init__.py"),
        "path_unchanged": True,
        "script_in_sys_modules": False,
        "first": expected_callbacks,
        "second": expected_callbacks,
        "same_package": True,
        "late_import": "lib_dbchar.doctor",
        "import_time_callbacks": 0,
        "errors": [],
    }


def test_version_route_answers(fake_webui):
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    app = fastapi.FastAPI()
    load_extension_script()
    fake_webui.start_app(app)
    fake_webui.start_app(app)  # a second app_started on the same app adds no duplicate
    assert fake_webui.errors == []
    assert [getattr(r, "path", None) for r in app.routes].count(VERSION_ROUTE) == 1
    response = TestClient(app).get(VERSION_ROUTE)
    assert response.status_code == 200
    assert response.json() == {"version": __version__}


def test_real_build_ui_makes_the_tab(fake_webui):
    if importlib.util.find_spec("lib_dbchar.ui.app") is None:
        pytest.skip("lib_dbchar.ui.app does not exist yet")
    load_extension_script()
    fake_webui.build_settings()
    tabs = fake_webui.build_tabs()
    assert fake_webui.errors == []
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert (title, elem_id) == ("dbchar", "dbchar")
    assert type(blocks).__name__ == "Blocks"
    assert type(blocks).__module__.startswith("gradio")


def test_seam_imports_outside_the_webui_without_heavy_modules(tmp_path):
    # scripts/dbchar.py imports it while the webui starts; docs and linters import it anywhere.
    code = (
        "import sys, lib_dbchar.host.webui\n"
        "print(sorted(m for m in ('torch', 'gradio', 'modules', 'launch') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(EXTENSION_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_only_the_webui_host_mentions_importing_modules():
    pattern = re.compile(r"\b(import modules|from modules)\b")
    package = sorted((EXTENSION_ROOT / "lib_dbchar").rglob("*.py"))
    sources = [*package, EXTENSION_ROOT / "scripts" / "dbchar.py"]
    offenders = [
        str(p.relative_to(EXTENSION_ROOT))
        for p in sources
        if p != WEBUI_HOST_FILE and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert pattern.search(WEBUI_HOST_FILE.read_text(encoding="utf-8"))  # the scan sees what it looks for


# -- jobs ------------------------------------------------------------------------------------------
def _recording(ctx, seen, on_report=None):
    """Wrap ctx.progress so the test sees every Progress after the host handled it."""
    inner = ctx.progress

    def progress(p):
        inner(p)
        seen.append(p)
        if on_report is not None:
            on_report(p)

    ctx.progress = progress
    return ctx


def test_job_through_the_seam_drives_shared_state(fake_webui):
    host = WebuiHost()
    state = fake_webui.shared.state
    lock = fake_webui.call_queue.queue_lock
    fraction = fake_webui.module("progress").progress_fraction
    seen, inside = [], {}

    def on_report(p):
        inside.setdefault("lock_taken", []).append(lock.acquire(blocking=False))
        inside.setdefault("fractions", []).append(fraction(state))

    def handler(task_id, title):
        inside["job"] = state.job
        state.trace.clear()
        with host.job(title) as ctx:
            report = run_checks(facts_from(host), _recording(ctx, seen, on_report))
        inside["trace"] = list(state.trace)
        return report, "done"

    report, status = host.wrap_gpu_call(handler)("task(dbchar-1)", "Environment check")

    n = len(report.checks)
    assert n >= 3
    assert status.startswith("done<div class='performance'>")  # the webui's timing note on the last output
    assert inside["job"] == "task(dbchar-1)"
    assert inside["lock_taken"] == [False] * (n + 1)  # held by the job at every step
    assert [p.done for p in seen] == list(range(n + 1))
    assert inside["fractions"] == [i / n for i in range(n + 1)]
    expected = [("textinfo", "Environment check")]
    for p in seen:
        expected += [("job_count", p.total), ("job_no", p.done), ("textinfo", p.text or "Environment check")]
    assert inside["trace"] == expected
    assert expected[-3:] == [("job_count", n), ("job_no", n), ("textinfo", "Environment check done")]
    # After the job: the webui's wrapper has ended the job and released the lock.
    assert (state.job, state.job_count) == ("", 0)
    assert fake_webui.progress.finished_tasks[-1] == "task(dbchar-1)"
    assert fake_webui.progress.current_task is None
    assert lock.acquire(blocking=False) is True
    lock.release()


def test_interrupt_mid_job_stops_before_the_next_check(fake_webui):
    host = WebuiHost()
    state = fake_webui.shared.state
    seen = []

    def interrupt_after_step_2(p):
        if p.done == 2:
            host.interrupt()  # what the Interrupt button does

    def handler():
        with host.job("Environment check") as ctx:
            report = run_checks(facts_from(host), _recording(ctx, seen, interrupt_after_step_2))
        return report, "done"

    outputs = host.wrap_gpu_call(handler, extra_outputs=["unchanged"])()

    # The job raised JobStopped; the webui's wrapper printed it and made it the status output.
    assert outputs[0] == "unchanged"
    assert "JobStopped: environment check stopped by the user" in outputs[-1]
    assert [type(exc) for _, exc in fake_webui.errors] == [JobStopped]
    assert [p.done for p in seen] == [0, 1, 2]  # no report, so no check, after the step that was running
    assert state.trace[-1] != ("textinfo", "Environment check done")
    assert state.interrupted is False  # the webui's wrapper resets the flag after the job
    assert fake_webui.call_queue.queue_lock.acquire(blocking=False) is True
    fake_webui.call_queue.queue_lock.release()


def test_should_stop_follows_interrupt_and_stop(fake_webui):
    host = WebuiHost()
    state = fake_webui.shared.state
    state.begin(job="x")
    with host.job("Training") as ctx:
        assert ctx.should_stop() is False
        state.stop_generating()
        assert ctx.should_stop() is True
        state.stopping_generation = False
        assert ctx.should_stop() is False
        host.interrupt()
        assert state.interrupted is True
        with pytest.raises(JobStopped, match="training stopped"):
            ctx.check_stop("training")


def test_progress_sets_counters_text_and_live_preview(fake_webui):
    from PIL import Image

    host = WebuiHost()
    state = fake_webui.shared.state
    fake_webui.shared.opts.live_previews_image_format = "jpeg"
    with host.job("Training") as ctx:
        assert state.textinfo == "Training"
        ctx.progress(Progress(3, 10, "", Image.new("RGBA", (8, 8), "red")))
    assert (state.job_no, state.job_count, state.textinfo) == (3, 10, "Training")
    assert state.current_image.mode == "RGB"  # the webui converts for JPEG previews
    assert state.id_live_preview == 1
    with host.job("Training") as ctx:
        ctx.report(4, 10, "step 4/10")
    assert (state.textinfo, state.id_live_preview) == ("step 4/10", 1)


def test_wrap_gpu_call_is_the_webuis_wrapper_with_a_shape_check(fake_webui):
    host = WebuiHost()
    state = fake_webui.shared.state

    def add(a, b=1):
        return a + b, f"job {state.job!r}"

    wrapped = host.wrap_gpu_call(add)
    assert wrapped.__name__ == "add"
    total, status = wrapped(2, b=3)
    assert total == 5 and status.startswith("job None<div class='performance'>")  # no task id
    assert fake_webui.errors == []

    def fail():
        raise DbcharError("dataset/ holds no pictures; add some")

    outputs = host.wrap_gpu_call(fail, extra_outputs=["keep"])()
    assert outputs[0] == "keep"
    assert "DbcharError: dataset/ holds no pictures; add some" in outputs[-1]
    assert (state.job, state.job_count, state.interrupted) == ("", 0, False)
    assert fake_webui.call_queue.queue_lock.acquire(blocking=False) is True
    fake_webui.call_queue.queue_lock.release()

    def returns_a_dict():
        return {"status": "ok"}

    outputs = host.wrap_gpu_call(returns_a_dict, extra_outputs=[None])()
    assert "returns_a_dict returned dict" in outputs[-1]
    assert "last item is the status HTML" in outputs[-1]
    assert [type(exc) for _, exc in fake_webui.errors] == [DbcharError, TypeError]


# -- VRAM --------------------------------------------------------------------------------------------
@pytest.fixture
def loaded_model(fake_webui):
    """A model loaded as at start-up, on a pretend GPU (the fake model only records its moves)."""
    import torch

    fake_webui.shared.device = torch.device("cuda")
    model = fake_webui.sd_models.load_model()
    assert model.moves == ["cuda"] and fake_webui.sd_models.load_count == 1
    return model


def test_vram_freed_moves_the_model_out_and_back(fake_webui, loaded_model):
    gc_before = fake_webui.devices.torch_gc_calls
    with WebuiHost().vram_freed():
        assert loaded_model.moves == ["cuda", "cpu"]
    assert loaded_model.moves == ["cuda", "cpu", "cuda"]
    assert fake_webui.devices.torch_gc_calls > gc_before
    assert fake_webui.sd_models.load_count == 1


def test_vram_freed_restores_when_the_body_raises(fake_webui, loaded_model):
    with pytest.raises(RuntimeError, match="out of memory"), WebuiHost().vram_freed():
        raise RuntimeError("CUDA out of memory")
    assert loaded_model.moves == ["cuda", "cpu", "cuda"]
    assert fake_webui.sd_models.load_count == 1


def test_vram_freed_never_loads_a_model(fake_webui):
    sd_models = fake_webui.sd_models
    with WebuiHost().vram_freed():
        pass
    assert sd_models.load_count == 0 and sd_models.model_data.sd_model is None
    # The trap is real in the fake: reading shared.sd_model loads a model.
    assert fake_webui.shared.sd_model is not None
    assert sd_models.load_count == 1


def test_vram_freed_leaves_a_model_loaded_meanwhile_alone(fake_webui, loaded_model):
    sd_models = fake_webui.sd_models
    assert loaded_model.sd_checkpoint_info.title == "anime/waifu.safetensors"  # the first one
    other = sd_models.get_closet_checkpoint_match("base.safetensors")
    with WebuiHost().vram_freed():
        newer = sd_models.reload_model_weights(info=other)
    assert newer is not loaded_model and sd_models.model_data.sd_model is newer
    assert loaded_model.moves == ["cuda", "cpu", "meta"]  # not sent back to the GPU
    assert newer.moves == ["cuda"]


def test_vram_freed_with_medvram_does_not_reinstall_hooks(fake_webui):
    fake_webui.shared.cmd_opts.medvram = True
    model = fake_webui.sd_models.load_model()
    with WebuiHost().vram_freed():
        pass
    assert model.lowvram is True and model.lowvram_setups == 1
    assert model.moves == []


def test_vram_freed_on_forge(fake_webui, loaded_model, monkeypatch):
    sd_models = fake_webui.sd_models
    for stub in ("send_model_to_cpu", "send_model_to_device", "unload_model_weights", "reload_model_weights"):
        monkeypatch.setattr(sd_models, stub, lambda *args, **kwargs: None)  # Forge's empty stubs
    calls = []
    memory = types.ModuleType("backend.memory_management")
    memory.unload_all_models = lambda: calls.append("unload_all_models")
    memory.soft_empty_cache = lambda *args, **kwargs: calls.append("soft_empty_cache")
    backend = types.ModuleType("backend")
    backend.memory_management = memory
    monkeypatch.setitem(sys.modules, "backend", backend)
    monkeypatch.setitem(sys.modules, "backend.memory_management", memory)
    monkeypatch.setitem(sys.modules, "modules_forge", types.ModuleType("modules_forge"))

    with WebuiHost().vram_freed():
        pass

    assert calls == ["unload_all_models", "soft_empty_cache"]
    assert loaded_model.moves == ["cuda"]
    assert sd_models.load_count == 1


# -- checkpoints, device, settings ---------------------------------------------------------------------
def test_checkpoints_come_from_the_webui_list(fake_webui, tmp_path):
    host = WebuiHost()
    models = fake_webui.models_dir
    assert [(r.title, r.path) for r in host.list_checkpoints()] == [
        ("anime/waifu.safetensors", models / "anime" / "waifu.safetensors"),
        ("base.safetensors", models / "base.safetensors"),
    ]
    shorthash = fake_webui.sd_models.checkpoints_list["base.safetensors"].calculate_shorthash()
    assert host.find_checkpoint("base.safetensors").title == f"base.safetensors [{shorthash}]"

    assert host.checkpoint_dir() == models
    write_dummy_safetensors(host.checkpoint_dir() / "neeko.safetensors")
    assert "neeko.safetensors" not in [r.title for r in host.list_checkpoints()]
    host.refresh_checkpoints()
    assert [r.title for r in host.list_checkpoints()] == [
        "anime/waifu.safetensors", f"base.safetensors [{shorthash}]", "neeko.safetensors",
    ]

    ckpt_dir = tmp_path / "ckpts"
    fake_webui.shared.cmd_opts.ckpt_dir = str(ckpt_dir)
    assert host.checkpoint_dir() == ckpt_dir
    write_dummy_safetensors(ckpt_dir / "ahri.safetensors")
    host.refresh_checkpoints()
    assert host.find_checkpoint("ahri.safetensors").path == ckpt_dir / "ahri.safetensors"


def test_device_and_dtype_are_strings(fake_webui):
    import torch

    host = WebuiHost()
    devices = fake_webui.devices
    assert (host.device(), host.dtype()) == ("cpu", "float16")
    devices.device, devices.dtype = torch.device("cuda", 1), torch.bfloat16
    assert (host.device(), host.dtype()) == ("cuda:1", "bfloat16")
    devices.device = None
    with pytest.raises(DbcharError, match="not chosen its device"):
        host.device()


def test_settings_read_what_opts_data_holds(fake_webui, tmp_path):
    host = WebuiHost()
    opts = fake_webui.shared.opts
    assert "dbchar_projects_dir" not in opts.data_labels  # before the first UI build
    assert host.settings() == Settings()
    assert host.projects_dir() == fake_webui.data_dir / "dbchar"

    # Values loaded from config.json before our options were added.
    opts.data["dbchar_projects_dir"] = str(tmp_path / "chars")
    opts.data["dbchar_tagger_cache_dir"] = None
    assert host.settings() == Settings(projects_dir=str(tmp_path / "chars"))
    assert host.projects_dir() == tmp_path / "chars"

    register(host)
    fake_webui.build_settings()  # adding the options keeps the saved values
    assert opts.dbchar_projects_dir == str(tmp_path / "chars")
    assert opts.set("dbchar_tagger_cache_dir", str(tmp_path / "cache")) is True
    expected = Settings(projects_dir=str(tmp_path / "chars"), tagger_cache_dir=str(tmp_path / "cache"))
    assert host.settings() == expected
    assert fake_webui.errors == []


def test_fake_launch_module(fake_webui, tmp_path, monkeypatch):
    log = tmp_path / "pip.log"
    monkeypatch.setenv("DBCHAR_FAKE_PIP_LOG", str(log))
    monkeypatch.delenv("INDEX_URL", raising=False)
    import launch

    assert launch.is_installed("pytest") is True
    assert launch.is_installed("dbchar-surely-not-installed") is False
    launch.run_pip("install diffusers==0.31.0", "diffusers")
    assert log.read_text() == "install diffusers==0.31.0 --prefer-binary\n"
    launch.args.skip_install = True
    assert launch.run_pip("install onnxruntime", "onnxruntime") is None
    assert log.read_text().count("\n") == 1
