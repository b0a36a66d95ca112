"""The Gradio UI: structure, forms, the project picker, the job helper, the page assets.

Runs with gradio 3.41 (the webui's pin) and gradio 4.x alike; handlers are called directly, as
gradio would call them, so no server or browser is needed here (tests/test_browser.py has those).
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from lib_dbchar import doctor
from lib_dbchar.config import setting
from lib_dbchar.errors import DbcharError
from lib_dbchar.host.standalone import StandaloneHost
from lib_dbchar.settings import Settings
from lib_dbchar.ui import compat
from lib_dbchar.ui.app import (
    SCRIPT_FILE,
    STYLE_FILE,
    TABS,
    DbcharUI,
    build_page,
    build_ui,
    device_text,
    script_loader,
)
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.environment import EnvironmentCheck
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.jobs import DIRECT_TASK_ID, Outcome, bind_job, status_box
from lib_dbchar.ui.messages import message_html
from lib_dbchar.ui.projects import ProjectPicker
from lib_dbchar.version import __version__

NO_CHANGE = compat.no_change()

# gradio 4.x registers a startup hook with FastAPI's deprecated on_event for every app it builds.
pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")


class RecordingHost(StandaloneHost):
    """A standalone host that counts Stop/Interrupt requests."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.interrupts = 0

    def interrupt(self) -> None:
        self.interrupts += 1
        super().interrupt()


def make_host(root: Path) -> RecordingHost:
    return RecordingHost(
        root / "models", Settings(projects_dir=str(root / "projects")), device="cpu", home=root / "home"
    )


@pytest.fixture
def host(tmp_path: Path) -> RecordingHost:
    return make_host(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DbcharUI:
    """The whole page, built once for the structural tests."""
    ui = DbcharUI(make_host(tmp_path_factory.mktemp("built")))
    ui.build()
    return ui


def config_components(blocks) -> list[dict]:
    return blocks.get_config_file()["components"]


def registered_functions(blocks) -> list:
    """The Python functions behind the page's events (a list in gradio 3, a dict in gradio 4)."""
    fns = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
    return [f.fn for f in fns]


def small_page(host, render):
    """Build ``render(ctx)`` inside a Blocks with the page context, as build_ui would."""
    with gr.Blocks(analytics_enabled=False) as blocks:
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        ctx = UiContext(host=host, project=None, task_id=task_id)
        result = render(ctx)
    return blocks, ctx, result


# -- compat ---------------------------------------------------------------------------------------
def test_compat_reports_the_imported_gradio():
    import gradio

    assert compat.gr is gradio
    assert int(gradio.__version__.split(".")[0]) == compat.GRADIO_MAJOR
    assert compat.GRADIO_MAJOR in (3, 4, 5)


def test_huggingface_hub_has_a_working_hffolder_after_import(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", "hf_dbchar_test_token")
    # Either the hub's own class (hub < 1.0) or dbchar's stand-in (hub >= 1.0): both must answer.
    assert huggingface_hub.HfFolder.get_token() == "hf_dbchar_test_token"
    assert huggingface_hub.HfFolder.get_token() == huggingface_hub.get_token()


def test_hffolder_stand_in_is_added_only_when_missing(monkeypatch):
    bare = types.ModuleType("huggingface_hub")
    bare.get_token = lambda: "from-get-token"
    monkeypatch.setitem(sys.modules, "huggingface_hub", bare)
    compat._add_missing_hffolder()
    assert bare.HfFolder.get_token() == "from-get-token"

    class Original:
        pass

    complete = types.ModuleType("huggingface_hub")
    complete.HfFolder = Original
    monkeypatch.setitem(sys.modules, "huggingface_hub", complete)
    compat._add_missing_hffolder()
    assert complete.HfFolder is Original


def test_offline_theme_loads_no_web_fonts():
    assert compat.offline_theme()._stylesheets == []


def test_listen_passes_js_under_this_gradios_name():
    with gr.Blocks(analytics_enabled=False) as blocks:
        button = gr.Button("x")
        compat.listen(button.click, None, None, None, js="function(){return [];}", queue=False)
    deps = blocks.get_config_file()["dependencies"]
    assert [d["js"] for d in deps] == ["function(){return [];}"]
    assert deps[0]["queue"] is False


def test_panel_is_a_container_in_both_majors():
    with gr.Blocks(analytics_enabled=False), compat.panel(elem_id="dbchar-test-panel") as box:
        gr.Textbox()
    assert box.elem_id == "dbchar-test-panel"
    assert len(box.children) == 1


# -- page structure --------------------------------------------------------------------------------
def test_build_ui_makes_an_unlaunched_blocks(built):
    assert isinstance(built.blocks, gr.Blocks)
    assert not built.blocks.is_running


def test_five_tabs_in_workflow_order(built):
    tabs = next(b for b in built.blocks.blocks.values() if getattr(b, "elem_id", None) == "dbchar-tabs")
    assert [(t.label, t.elem_id) for t in tabs.children] == [
        ("Dataset", "dbchar-tab-dataset"),
        ("Tags", "dbchar-tab-tags"),
        ("Concept", "dbchar-tab-concept"),
        ("Train", "dbchar-tab-train"),
        ("Merge", "dbchar-tab-merge"),
    ]
    assert [word for word, _ in TABS] == ["dataset", "tags", "concept", "train", "merge"]


def test_each_tab_says_what_it_will_do(built):
    by_id = {c["props"].get("elem_id"): c["props"] for c in config_components(built.blocks)}
    expected = {
        "dataset": "512",
        "tags": "WD14",
        "concept": "[filewords]",
        "train": "overfitting test",
        "merge": "Add difference",
    }
    for word, needle in expected.items():
        assert needle in by_id[f"dbchar-{word}-plan"]["value"], word


def test_header_shows_version_host_and_device(built):
    header = next(c for c in config_components(built.blocks) if c["props"].get("elem_id") == "dbchar-header")
    assert f"dbchar {__version__}" in header["props"]["value"]
    assert "host: standalone" in header["props"]["value"]
    assert "device: cpu" in header["props"]["value"]


def test_header_survives_a_host_without_a_device_yet(host, monkeypatch):
    def not_yet():
        raise DbcharError("The webui has not chosen its device yet; wait until it has finished starting.")

    monkeypatch.setattr(host, "device", not_yet)
    assert device_text(host) == "not known yet"
    assert isinstance(build_ui(host), gr.Blocks)


def test_every_elem_id_and_class_starts_with_dbchar(built):
    ids, classes = [], []
    for component in config_components(built.blocks):
        props = component.get("props", {})
        if props.get("elem_id"):
            ids.append(props["elem_id"])
        classes.extend(props.get("elem_classes") or [])
    assert len(ids) > 20
    assert [i for i in ids if not i.startswith("dbchar-")] == []
    assert [c for c in classes if not c.startswith("dbchar-")] == []
    assert len(ids) == len(set(ids)), "element ids must be unique on the page"


def test_standalone_jobs_have_no_webui_js(built):
    """Standalone, jobs go straight to Python: the webui's job-submit JS (its task ids) is not used."""
    deps = built.blocks.get_config_file()["dependencies"]
    scripts = [d["js"] for d in deps if d["js"]]
    assert [js for js in scripts if "submit" in js.lower()] == []
    # The only event JS left is page navigation (Pick a checkpoint -> the Merge tab).
    assert all("dbcharOpenMergeTab" in js for js in scripts)


def test_build_ui_returns_blocks(host):
    assert isinstance(build_ui(host), gr.Blocks)


def test_standalone_page_serves_offline(host):
    """The top-level page (title, CSS, JS loader, queue) renders through gradio's own app."""
    from gradio.routes import App
    from starlette.testclient import TestClient

    page = build_page(host)
    assert page.title == "dbchar"
    assert ".dbchar-message" in page.css
    compat.accept_old_template_calls()
    with TestClient(App.create_app(page)) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert "dbchar-tabs" in response.text
    loads = [d for d in page.get_config_file()["dependencies"] if d["js"] and "dbchar-script" in d["js"]]
    assert len(loads) == 1


def test_script_loader_embeds_the_source_as_a_js_string():
    source = 'function dbcharX() { return "</script>\\n"; }'
    js = script_loader(source)
    assert "</" not in js
    assert json.dumps(source).replace("</", "<\\/") in js
    assert js.startswith("function(){") and js.endswith("}")


# -- forms -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    enabled: bool = setting(True, label="Enabled")
    steps: int = setting(100, label="Steps", minimum=1, maximum=1000)
    rate: float = setting(1e-6, label="Learning rate", minimum=0.0)
    scheduler: str = setting("ddim", label="Scheduler", choices=["ddim", "euler"])
    prompt: str = setting("a, b", label="Prompt", multiline=True)
    words: list[str] = setting(["red", "blue"], label="Words")  # noqa: RUF009 - a default_factory field
    seed: int | None = setting(None, label="Seed")


@pytest.fixture
def sample_form() -> Form[Sample]:
    with gr.Blocks(analytics_enabled=False):
        form = Form("sample", Sample).render()
    return form


def test_form_builds_one_widget_per_field(sample_form):
    kinds = {name: type(c).__name__ for name, c in sample_form.components.items()}
    assert kinds == {
        "enabled": "Checkbox",
        "steps": "Slider",
        "rate": "Number",
        "scheduler": "Dropdown",
        "prompt": "Textbox",
        "words": "Textbox",
        "seed": "Number",
    }
    steps = sample_form.components["steps"]
    assert (steps.minimum, steps.maximum, steps.label) == (1, 1000, "Steps")
    assert sample_form.components["prompt"].lines == 3
    assert [c.elem_id for c in sample_form.components.values()] == [
        f"dbchar-sample-{name}"
        for name in ("enabled", "steps", "rate", "scheduler", "prompt", "words", "seed")
    ]


def test_form_round_trips_the_defaults(sample_form):
    widget_values = {name: c.value for name, c in sample_form.components.items()}
    assert sample_form.parse(widget_values) == Sample()


def test_form_collects_what_a_user_typed(sample_form):
    typed = {"enabled": False, "steps": 250.0, "scheduler": "euler", "words": " x \n\ny\n", "seed": 42.0}
    assert sample_form.collect(typed) == {**typed, "words": ["x", "y"]}
    assert sample_form.parse(typed) == Sample(
        enabled=False, steps=250, scheduler="euler", words=["x", "y"], seed=42
    )
    assert sample_form.parse({"seed": ""}).seed is None


def test_form_shows_a_dataclass(sample_form):
    shown = sample_form.show(Sample(words=["p", "q"], steps=7))
    assert shown == [True, 7, 1e-6, "ddim", "a, b", "p\nq", None]


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"steps": 5000}, "Sample.steps (Steps): 5000 is above the maximum 1000"),
        ({"steps": 2.5}, "Sample.steps (Steps): 2.5 is not a valid int"),
        ({"scheduler": "plms"}, "Sample.scheduler (Scheduler): 'plms' is not one of ddim, euler"),
        ({"rate": -1.0}, "Sample.rate (Learning rate): -1.0 is below the minimum 0.0"),
    ],
)
def test_form_names_the_field_of_a_bad_value(sample_form, values, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        sample_form.parse(values)


def test_settings_form_shows_the_current_settings():
    current = Settings(projects_dir="/data/dbchar", tagger_cache_dir="")
    with gr.Blocks(analytics_enabled=False):
        form = Form("settings", Settings, interactive=False, initial=current).render()
    assert form.components["projects_dir"].value == "/data/dbchar"
    assert form.components["projects_dir"].elem_id == "dbchar-settings-projects_dir"
    assert form.components["projects_dir"].interactive is False
    assert form.parse({n: c.value for n, c in form.components.items()}) == current


# -- project picker --------------------------------------------------------------------------------
def test_create_project_makes_the_folder_and_selects_it(host):
    picker = ProjectPicker(host)
    dropdown, name_box, message = picker.create("Star Guardian/Neeko")
    root = host.projects_dir() / "Star Guardian_Neeko"
    assert (root / "project.json").is_file()
    assert (root / "dataset").is_dir()
    assert dropdown["choices"] == ["Star Guardian_Neeko"]
    assert dropdown["value"] == "Star Guardian_Neeko"
    assert name_box["value"] == ""
    assert "dbchar-message-ok" in message
    assert f"Created project Star Guardian_Neeko in {root}" in message


def test_create_project_twice_says_it_exists(host):
    picker = ProjectPicker(host)
    picker.create("ahri")
    dropdown, name_box, message = picker.create("ahri")
    assert dropdown == NO_CHANGE and name_box == NO_CHANGE
    assert "dbchar-message-error" in message
    assert "already exists" in message
    assert picker.choices() == ["ahri"]


@pytest.mark.parametrize(
    ("name", "needle"),
    [("...", "no usable characters"), ("con", "reserved on Windows"), ("   ", "Type a name")],
)
def test_create_project_rejects_a_bad_name_with_a_message(host, name, needle):
    dropdown, _, message = ProjectPicker(host).create(name)
    assert dropdown == NO_CHANGE
    assert needle in message
    assert "dbchar-message-error" in message
    assert not host.projects_dir().exists() or list(host.projects_dir().iterdir()) == []


def test_create_project_message_is_escaped(host):
    _, _, message = ProjectPicker(host).create("Tom & Jerry")
    assert "Created project Tom &amp; Jerry in" in message
    assert "Tom & Jerry" not in message


def test_refresh_keeps_the_current_project_when_it_exists(host):
    picker = ProjectPicker(host)
    picker.create("a")
    picker.create("b")
    assert picker.refresh("b") == compat.update(choices=["a", "b"], value="b")
    assert picker.refresh("gone")["value"] == "a"


# -- the job helper, standalone -----------------------------------------------------------------------
def environment_check(host):
    def render(ctx):
        check = EnvironmentCheck(ctx).render()
        check.register()
        return check

    return small_page(host, render)


def progress_recorder(on_call=None):
    calls: list[tuple] = []

    def progress(value, desc=None):
        calls.append((value, desc))
        if on_call is not None:
            on_call(value, desc)

    return progress, calls


def test_environment_check_returns_the_report_and_reports_progress(host, tmp_path):
    _, _, check = environment_check(host)
    elsewhere = tmp_path / "elsewhere"
    progress, calls = progress_recorder()
    report, shown_dir, shown_cache, status = check.binding.call(
        {"settings": {"projects_dir": str(elsewhere), "tagger_cache_dir": ""}}, progress=progress
    )
    assert (shown_dir, shown_cache) == (str(elsewhere), "")
    assert report.startswith(f"dbchar {__version__} on Python")
    assert "[ok] device: cpu" in report
    assert f"projects folder: {elsewhere} (will be created)" in report
    assert "dbchar-message-ok" in status
    assert "checks passed" in status or "Problems found" in status
    assert calls[0] == ((0, 6), "Checking packages")
    assert calls[-1] == ((6, 6), "Environment check done")


def test_environment_check_stops_when_the_host_is_interrupted(host):
    _, _, check = environment_check(host)
    # The user presses Stop while the first check runs: the job stops before the second one.
    progress, calls = progress_recorder(on_call=lambda value, desc: host.interrupt())
    *outputs, status = check.binding.call({"settings": {}}, progress=progress)
    assert outputs == [NO_CHANGE] * 3
    assert "dbchar-message-stopped" in status
    assert "Environment check stopped by the user." in status
    assert [desc for _, desc in calls] == ["Checking packages"]


def test_stop_button_interrupts_without_queueing(host):
    blocks, _, _ = environment_check(host)
    deps = blocks.get_config_file()["dependencies"]
    assert [d["queue"] for d in deps].count(False) == 1
    stop = next(fn for fn in registered_functions(blocks) if fn.__name__ == "stop")
    stop()
    assert host.interrupts == 1


def test_standalone_binding_hands_gradio_a_dict_and_a_progress_tracker(host):
    _, ctx, check = environment_check(host)
    binding = check.binding
    inputs = binding.gradio_inputs()
    assert isinstance(inputs, set)
    assert inputs == {ctx.task_id, *check.form.components.values()}
    params = list(inspect.signature(binding.fn).parameters.values())
    assert [p.name for p in params] == ["data", "progress"]
    assert isinstance(params[1].default, gr.Progress)
    assert binding.js(check.status) is None


def sample_job(host, handler):
    def render(ctx):
        form = Form("sample", Sample).render()
        out = gr.Textbox(elem_id="dbchar-sample-out")
        button = gr.Button("Go")
        status = status_box("sample")
        return bind_job(
            ctx,
            button,
            title="sample job",
            handler=handler,
            status=status,
            inputs={"sample": form},
            outputs=[out],
        )

    return small_page(host, render)[2]


def test_job_gets_the_form_as_its_dataclass(host):
    binding = sample_job(host, lambda values, job: Outcome((repr(values["sample"]),), "Sampled."))
    out, status = binding.call({"sample": {"steps": 7.0, "words": "a\nb"}})
    assert out == repr(Sample(steps=7, words=["a", "b"]))
    assert "Sampled." in status


def test_job_reports_a_bad_form_value_by_field_name(host):
    ran = []
    binding = sample_job(host, lambda values, job: ran.append(values) or Outcome(("x",)))
    out, status = binding.call({"sample": {"steps": 5000}})
    assert ran == []
    assert out == NO_CHANGE
    assert "dbchar-message-error" in status
    assert "Sample.steps (Steps)" in status


def test_job_shows_a_dbchar_error_as_a_message(host):
    def fail(values, job):
        raise DbcharError("The folder /x is read-only; pick another in Settings.")

    out, status = sample_job(host, fail).call({"sample": {}})
    assert out == NO_CHANGE
    assert "The folder /x is read-only; pick another in Settings." in status
    assert "Traceback" not in status


def test_job_lets_programming_errors_through(host):
    def broken(values, job):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        sample_job(host, broken).call({"sample": {}})
    with pytest.raises(TypeError, match="returned 2 outputs for 1 components"):
        sample_job(host, lambda values, job: Outcome(("a", "b"))).call({"sample": {}})


def test_job_holds_the_host_gpu_lock(host):
    seen = []
    binding = sample_job(host, lambda values, job: seen.append(host._lock.locked()) or Outcome(("x",)))
    binding.call({"sample": {}})
    assert seen == [True]


# -- the job helper inside the (fake) webui -----------------------------------------------------------
@pytest.fixture
def webui_host(fake_webui):
    from lib_dbchar.host.webui import WebuiHost

    return WebuiHost()


def test_webui_binding_follows_the_webui_convention(webui_host):
    blocks, ctx, check = environment_check(webui_host)
    binding = check.binding
    assert binding.gradio_inputs() == [ctx.task_id, *check.form.components.values()]
    js = binding.js(check.status)
    assert js == 'function(){return dbcharSubmitJob("dbchar-env-status", 3, arguments);}'

    run_deps = [d for d in blocks.get_config_file()["dependencies"] if d["js"]]
    assert [d["js"] for d in run_deps] == [js]
    assert run_deps[0]["show_progress"] == "hidden"  # the webui draws its own bar
    assert all(c.interactive is False for c in check.form.components.values())


def test_webui_environment_check_drives_the_webui_progress(fake_webui, webui_host):
    _, _, check = environment_check(webui_host)
    report, shown_dir, _, status = check.binding.call({})
    assert "[ok] device: cpu" in report
    assert f"projects folder: {fake_webui.data_dir / 'dbchar'}" in report
    assert shown_dir == ""
    assert "dbchar-message-ok" in status
    assert DIRECT_TASK_ID in fake_webui.progress.finished_tasks
    assert ("textinfo", "Checking packages") in fake_webui.shared.state.trace


def test_webui_environment_check_uses_settings_saved_after_the_page_was_built(
    fake_webui, webui_host, tmp_path
):
    _, _, check = environment_check(webui_host)
    saved = tmp_path / "saved-projects"
    fake_webui.shared.opts.data["dbchar_projects_dir"] = str(saved)
    report, shown_dir, _, _ = check.binding.call({})
    assert f"projects folder: {saved} (will be created)" in report
    assert shown_dir == str(saved)  # the read-only form now shows what was checked


def test_webui_interrupt_stops_the_check(fake_webui, webui_host, monkeypatch):
    real = doctor.check_packages

    def packages_then_interrupt():
        webui_host.interrupt()  # what the webui's Interrupt button does, mid-job
        return real()

    monkeypatch.setattr(doctor, "check_packages", packages_then_interrupt)
    _, _, check = environment_check(webui_host)
    *outputs, status = check.binding.call({})
    assert outputs == [NO_CHANGE] * 3
    assert "Environment check stopped by the user." in status
    assert fake_webui.shared.state.interrupted is False  # the webui's wrapper reset it


def test_webui_build_ui_has_the_same_tabs(webui_host):
    ui = DbcharUI(webui_host)
    ui.build()
    header = next(c for c in config_components(ui.blocks) if c["props"].get("elem_id") == "dbchar-header")
    assert "host: webui" in header["props"]["value"]
    labels = [c["props"]["label"] for c in config_components(ui.blocks) if c["type"] == "tabitem"]
    assert labels == ["Dataset", "Tags", "Concept", "Train", "Merge"]


# -- small pieces ---------------------------------------------------------------------------------
def test_elem_id_prefixes_and_cleans():
    assert elem_id("tab", "dataset") == "dbchar-tab-dataset"
    assert elem_id("settings", "projects_dir") == "dbchar-settings-projects_dir"
    assert elem_id("a b/c", "") == "dbchar-a-b-c"


def test_message_html_escapes_and_checks_the_kind():
    assert message_html("a <b> & c", "error") == (
        '<div class="dbchar-message dbchar-message-error">a &lt;b&gt; &amp; c</div>'
    )
    with pytest.raises(ValueError, match="message kind 'loud'"):
        message_html("x", "loud")


# -- style.css and dbchar.js ----------------------------------------------------------------------
def css_selectors(text: str) -> list[str]:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    selectors = []
    for block in re.findall(r"([^{}]+)\{[^{}]*\}", text):
        selectors.extend(s.strip() for s in block.split(",") if s.strip())
    return selectors


def test_style_css_only_styles_dbchar_elements():
    selectors = css_selectors(STYLE_FILE.read_text(encoding="utf-8"))
    assert len(selectors) > 5
    assert [s for s in selectors if not re.match(r"^[#.]dbchar-", s)] == []
    names = [n for s in selectors for n in re.findall(r"[#.]([A-Za-z_][\w-]*)", s)]
    assert [n for n in names if not n.startswith("dbchar-")] == []


def test_css_regex_catches_a_stray_selector():
    assert css_selectors("/* c */ .dbchar-a, body { x: 1 }") == [".dbchar-a", "body"]


def js_globals(text: str) -> list[str]:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    top_level = re.findall(
        r"^(?:async\s+)?function\s+([\w$]+)|^(?:var|let|const|class)\s+([\w$]+)", text, re.M
    )
    assigned = re.findall(r"\bwindow\.([\w$]+)\s*=", text)
    return [a or b for a, b in top_level] + assigned


def test_dbchar_js_defines_only_dbchar_globals():
    source = SCRIPT_FILE.read_text(encoding="utf-8")
    names = js_globals(source)
    assert "dbcharSubmitJob" in names
    assert [n for n in names if not n.startswith("dbchar")] == []
    for helper in ("gradioApp", "onUiLoaded", "randomId", "requestProgress"):
        assert helper in source.split("*/", 2)[1], f"{helper} must be declared in /* global */"


def test_js_regex_catches_a_stray_global():
    assert js_globals("function submit() {}\nvar x = 1;\nwindow.y = 2;\n") == ["submit", "x", "y"]


def test_dbchar_js_uses_ids_and_classes_the_page_has(built):
    source = SCRIPT_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"""["'](dbchar-[\w-]+)["']""", source))
    page_ids = {c["props"].get("elem_id") for c in config_components(built.blocks)}
    assert "dbchar-tabs" in used
    assert used - page_ids <= {"dbchar-ready", "dbchar-script"}
