"""The Train tab while a run goes: the live view, the release of a kept tagger, the SDXL refusal."""

from __future__ import annotations

import inspect
import json

import pytest

from lib_dbchar.concept import Concept, save_concepts
from lib_dbchar.tagger.session import TaggerHolder
from lib_dbchar.train.run import RunFolders, TrainResult
from lib_dbchar.ui.compat import GRADIO_MAJOR, gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.tabs import tags as tags_tab
from lib_dbchar.ui.tabs import train as train_tab
from lib_dbchar.ui.train_logic import ActiveRuns, live_views, release_held_memory, source_problem
from tests import test_ui_concept_train as base

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")

SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"


@pytest.fixture
def host(tmp_path):
    return base.host.__wrapped__(tmp_path)  # the same host as the Concept/Train tab tests


@pytest.fixture
def project(host):
    return base.project.__wrapped__(host)


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def build_page(host):
    """A page with the Tags and Train tabs on one context, and the Blocks."""
    with gr.Blocks(analytics_enabled=False) as blocks:
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        picker = gr.Dropdown(choices=["neeko"], value="neeko", elem_id=elem_id("project"))
        ctx = UiContext(host=host, project=picker, task_id=task_id)
        tags = tags_tab.render(ctx)
        train = train_tab.render(ctx)
    return blocks, ctx, tags, train


def block_functions(blocks):
    return list(blocks.fns.values()) if isinstance(blocks.fns, dict) else list(blocks.fns)


# -- the live view ----------------------------------------------------------------------------------
def test_live_views_refresh_while_active_then_stop():
    clock, produced = FakeClock(), []

    def view() -> int:
        produced.append(len(produced))
        return produced[-1]

    def active() -> bool:
        return len(produced) < 3  # the run ends after the third view

    out = list(live_views(view, active, every=2.0, sleep=clock.sleep, clock=clock))
    assert out == [0, 1, 2, 3]  # three while active, one final
    assert clock.sleeps == [2.0, 2.0, 2.0]


def test_live_views_wait_for_a_queued_start_then_give_up():
    clock = FakeClock()
    # The run begins after 1.5 s of waiting, runs for one tick, ends.
    states = iter([False, False, False, True, True, False])
    out = list(
        live_views(
            lambda: "v", lambda: next(states), every=3.0, start_grace=60, sleep=clock.sleep, clock=clock
        )
    )
    assert out == ["v", "v"] and clock.sleeps == [0.5, 0.5, 0.5, 3.0]
    # Nothing ever starts: after the grace period, one view and the end.
    clock = FakeClock()
    out = list(live_views(lambda: "v", lambda: False, start_grace=10, sleep=clock.sleep, clock=clock))
    assert out == ["v"] and clock.now == pytest.approx(10.0)
    # No grace (the Refresh button): one view at once.
    assert list(live_views(lambda: "v", lambda: False, sleep=pytest.fail)) == ["v"]


def test_active_runs_count_nested_jobs(tmp_path):
    runs = ActiveRuns()
    assert not runs.active()
    runs.begin(tmp_path / "a")
    runs.begin(tmp_path / "a")
    runs.end(tmp_path / "a")
    assert runs.active(tmp_path / "a") and not runs.active(tmp_path / "b")
    runs.end(tmp_path / "a")
    assert not runs.active()


def test_watch_follows_the_run_folder_until_the_job_ends(host, project):
    _, _, _, tab = build_page(host)
    tab.live_every = 0.01
    run_dir = project.run_dir("live")
    folders = RunFolders(run_dir)
    tab.runs.begin(run_dir)
    views = tab.watch_values("neeko", "live", 0.5)
    first = next(views)
    assert first[0] == "No steps logged yet." and first[2] == "No checkpoint written yet."
    folders.loss_log.parent.mkdir(parents=True)
    folders.loss_log.write_text(json.dumps({"step": 1, "loss": 0.25, "lr": 1e-6}) + "\n", encoding="utf-8")
    second = next(views)
    assert second[0].startswith("step 1: loss 0.2500")
    tab.runs.end(run_dir)
    rest = list(views)
    assert len(rest) == 1 and rest[0][0] == second[0]
    # Without a project or run name: one view with the reason, then the end.
    only = list(tab.watch_values("neeko", "", 0.5))
    assert len(only) == 1 and only[0][0].startswith("Type a run name")


def test_start_click_also_starts_a_live_view(host, project):
    blocks, _, _, tab = build_page(host)
    watchers = [bf for bf in block_functions(blocks) if bf.fn == tab.watch_after_start]
    assert len(watchers) == 1
    assert inspect.isgeneratorfunction(watchers[0].fn)
    if GRADIO_MAJOR >= 4:
        # gradio 4 would otherwise run one live view at a time across every open page.
        assert watchers[0].concurrency_limit is None
    assert [bf for bf in block_functions(blocks) if bf.fn == tab.watch_values]


@pytest.mark.slow  # the first import of the training loop (diffusers) takes seconds
def test_start_marks_the_run_active_and_releases_a_kept_tagger(host, project, monkeypatch):
    from lib_dbchar.train import loop

    shutil_model(host)
    save_concepts(project.concept_file, [Concept(instance_token="sks")])
    _, ctx, tags, tab = build_page(host)
    assert tags.tagging.holder.release in ctx.release_hooks
    closed = []

    class Kept:
        def close(self) -> None:
            closed.append(True)

    tags.tagging.holder.tagger = Kept()
    seen = {}

    def fake_train(spec, job, *, resume=False, on_event=None):
        seen["active"] = tab.runs.active(spec.run_dir)
        seen["tagger"] = tags.tagging.holder.tagger
        return TrainResult(str(spec.run_dir), "finished", 2, 1)

    monkeypatch.setattr(loop, "train", fake_train)
    out = tab.start_binding.call({"source": "model.safetensors", "run_name": "r", "config": base.TINY})
    assert "finished at step 2" in out[-1], out[-1]
    assert seen == {"active": True, "tagger": None} and closed == [True]
    assert not tab.runs.active()


def test_release_held_memory_calls_every_hook():
    calls = []
    holder = TaggerHolder()
    ctx = UiContext(
        host=None, project=None, task_id=None, release_hooks=[lambda: calls.append(1), holder.release]
    )
    assert release_held_memory(ctx) == 2 and calls == [1]
    assert release_held_memory(object()) == 0


# -- SDXL -------------------------------------------------------------------------------------------
def shutil_model(host, key: str = "model.diffusion_model.input_blocks.1.1.proj_in.weight"):
    """A minimal checkpoint in the host's folder: one key decides what it is taken for."""
    import safetensors.torch
    import torch

    name = "sdxl.safetensors" if key == SDXL_KEY else "model.safetensors"
    path = host.checkpoint_dir() / name
    safetensors.torch.save_file({key: torch.zeros(2, 2, 1, 1)}, str(path))
    return path


def test_sdxl_source_is_refused_at_selection_and_before_any_job(host, project):
    sdxl = shutil_model(host, SDXL_KEY)
    # The only checkpoint, so the picker shows it at once: the note is there from the start.
    assert "SDXL is not supported for training yet" in build_page(host)[3].source_info.value
    problem = source_problem(sdxl)
    assert problem.startswith(
        "SDXL is not supported for training yet: sdxl.safetensors is Stable Diffusion XL"
    )
    assert source_problem(shutil_model(host)) is None
    assert source_problem(host.checkpoint_dir() / "missing.safetensors") is None
    save_concepts(project.concept_file, [Concept(instance_token="sks")])
    _, _, _, tab = build_page(host)
    note = tab.source_note("sdxl.safetensors", "")
    assert "dbchar-message-error" in note and "SDXL is not supported for training yet" in note
    assert tab.source_note("model.safetensors", "") == ""
    assert "SDXL is not supported" in tab.source_note(None, str(sdxl))
    values = {"source": "sdxl.safetensors", "run_name": "r", "config": base.TINY}
    for binding in (tab.start_binding, tab.classes.binding):
        status = binding.call(values)[-1]
        assert "dbchar-message-error" in status and "SDXL is not supported for training yet" in status
    assert host.freed == 0 and not project.run_dir("r").exists()
