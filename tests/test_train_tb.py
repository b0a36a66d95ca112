"""TensorBoard files on resume: no point past the step a run resumes from survives."""

import os

import pytest

from lib_dbchar.train.loop import train
from lib_dbchar.train.run import TrainEvent, read_loss_log
from lib_dbchar.train.tbevents import EventWriter, read_scalars, records, trim_events
from tests.test_train_loop import make_project, spec_for, tiny_config


def _session(folder, steps, *, name_time):
    """An event file with ``loss = step / 10`` at ``steps``; ``name_time`` orders the files as time does."""
    with EventWriter(folder) as writer:
        for step in steps:
            writer.add_scalars(step, {"loss": step / 10})
    named = writer.path.with_name(f"events.out.tfevents.{name_time}.test")
    writer.path.rename(named)
    return named


def test_trim_drops_points_past_the_step_and_keeps_the_rest(tmp_path):
    first = _session(tmp_path, range(1, 6), name_time=2000)  # died at step 5, state saved at 3
    untouched = _session(tmp_path, [1, 2], name_time=1000)
    before = untouched.read_bytes()
    stamp = os.stat(untouched).st_mtime_ns

    assert trim_events(tmp_path, 3) == [first]
    assert [s for s, _ in read_scalars(tmp_path)["loss"]] == [1, 2, 1, 2, 3]
    assert untouched.read_bytes() == before and os.stat(untouched).st_mtime_ns == stamp
    assert len(list(records(first))) == 4  # the file version stays
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert trim_events(tmp_path, 3) == []  # nothing more to do


def test_trim_drops_a_torn_last_record(tmp_path):
    path = _session(tmp_path, [1, 2, 3], name_time=1000)
    path.write_bytes(path.read_bytes()[:-7])  # a kill in the middle of step 3's record
    assert trim_events(tmp_path, 10) == [path]
    assert [s for s, _ in read_scalars(tmp_path)["loss"]] == [1, 2]
    # Appending after the torn record would have hidden everything written later from TensorBoard.
    assert len(list(records(path))) == 3


def test_trim_of_a_missing_folder_is_nothing(tmp_path):
    assert trim_events(tmp_path / "absent", 3) == []


class _Crash(RuntimeError):
    pass


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_resume_after_a_crash_logs_each_step_once(tiny_sd1, tmp_path):
    project = make_project(tmp_path / "project")
    config = tiny_config(tiny_sd1, preview_every_epochs=0, prior_preservation=False, save_on_stop=False)
    straight = train(spec_for(project, tiny_sd1, "straight", config))
    spec = spec_for(project, tiny_sd1, "crashed", config)

    def crash_at_step_3(event: TrainEvent) -> None:
        if event.kind == "step" and event.step == 3:
            raise _Crash("the machine went down")

    with pytest.raises(_Crash):
        train(spec, on_event=crash_at_step_3)  # state saved at step 2 (end of epoch 1), step 3 logged
    board = spec.run_dir / "logging" / "dreambooth"
    assert [s for s, _ in read_scalars(board)["loss"]] == [1, 2, 3]
    resumed = train(spec, resume=True)

    expected = [r["loss"] for r in read_loss_log(straight.loss_log)]
    scalars = read_scalars(board)
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["loss"]] == pytest.approx(expected, rel=1e-6)
    assert [r["step"] for r in read_loss_log(resumed.loss_log)] == [1, 2, 3, 4, 5, 6]
    assert len(list(board.glob("events.out.tfevents.*"))) == 2  # one per session

    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(board))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx(expected, rel=1e-6)
