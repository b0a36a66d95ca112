"""Training in several processes (DDP over gloo on the CPU): the launcher's environment, the shards,
and a 2-process run of the tiny model against a 1-process one, stop and resume included."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_dbchar.checkpoint import ldm_to_diffusers, load_single_file
from lib_dbchar.cli import main
from lib_dbchar.concept import Concept, save_concepts
from lib_dbchar.jobs import JobContext
from lib_dbchar.train.config import TrainConfig
from lib_dbchar.train.data import BatchPlan, Sample, TrainImage
from lib_dbchar.train.distributed import SINGLE, Processes, balance_warning, from_environ, process_group
from lib_dbchar.train.loop import _shard, train
from lib_dbchar.train.run import RunSpec, TrainingStopped, load_run_spec, read_loss_log
from lib_dbchar.train.state import load_state
from lib_dbchar.train.tbevents import read_scalars
from tests.test_train_loop import make_project

REPO = Path(__file__).resolve().parents[1]

# --- the launcher's environment and the shards -----------------------------------------------


def test_no_launcher_is_one_process():
    assert from_environ({}) is SINGLE
    assert from_environ({"WORLD_SIZE": "1", "RANK": "0"}) is SINGLE
    assert not SINGLE.distributed and SINGLE.is_main and SINGLE.shard(3) is None
    assert SINGLE.device("cuda") == "cuda" and SINGLE.sum([1.5, 2.0]) == [1.5, 2.0]
    assert SINGLE.any(True) and not SINGLE.any(False)


def test_launcher_environment_is_read_and_checked():
    p = from_environ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (p.world_size, p.rank, p.local_rank, p.is_main, p.distributed) == (4, 3, 1, False, True)
    assert p.device("cuda") == "cuda:1" and p.device("cuda:0") == "cuda:1" and p.device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"RANK=4: must be from 0 to 3 \(WORLD_SIZE=4\)"):
        from_environ({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        from_environ({"WORLD_SIZE": "two"})


def _batch(pictures: int, prior: bool) -> BatchPlan:
    def sample(name):
        return Sample(TrainImage(Path(name), name, 0), name, False)

    return BatchPlan(
        0,
        tuple(sample(f"p{i}") for i in range(pictures)),
        tuple(sample(f"c{i}") for i in range(pictures)) if prior else (),
    )


def test_shards_split_pictures_with_their_class_images():
    batch = _batch(3, prior=True)
    ranks = [_shard(Processes(world_size=2, rank=r), batch) for r in (0, 1)]
    assert [x.image.caption for x in ranks[0].samples] == ["p0", "p2", "c0", "c2"]
    assert ranks[0].rows == [0, 2, 3, 5] and ranks[1].rows == [1, 4]
    assert [x.image.caption for x in ranks[1].samples] == ["p1", "c1"]
    assert all((x.size, x.pictures, x.weight) == (6, 3, 1.0) for x in ranks)
    whole = _shard(SINGLE, batch)
    assert whole.rows is None and len(whole.samples) == 6
    # A process left without a picture trains a placeholder with weight 0.
    short = _shard(Processes(world_size=2, rank=1), _batch(1, prior=False))
    assert (short.weight, short.rows, short.pictures) == (0.0, [0], 1)


def test_a_batch_that_does_not_split_evenly_is_warned_about():
    assert balance_warning(4, Processes(world_size=2)) == "" and balance_warning(1, SINGLE) == ""
    text = balance_warning(1, Processes(world_size=2))
    assert text.startswith("TrainConfig.batch_size 1 is smaller than the 2 processes: 1 of them train")
    assert text.endswith(
        "Set batch_size to a multiple of 2 (the batch is split among the processes, not multiplied)."
    )
    assert "some train 2 pictures per step, the others 1" in balance_warning(
        5, Processes(world_size=4, rank=1)
    )


def test_optimizer_in_backward_is_refused_with_several_processes(tmp_path):
    spec = RunSpec(
        tmp_path,
        "run",
        TrainConfig(source_checkpoint="x.safetensors", optimizer_in_backward=True, mixed_precision="no"),
        (Concept(instance_token="sks"),),
        tmp_path / "models",
    )
    with pytest.raises(
        ValueError, match=r"TrainConfig\.optimizer_in_backward: not possible with 2 processes"
    ):
        train(spec, processes=Processes(world_size=2, rank=0))


# --- a 2-process run on the tiny model ---------------------------------------------------------

SETTINGS = {
    "resolution": 64, "epochs": 2, "batch_size": 2, "learning_rate": 1e-3, "mixed_precision": "no",
    "save_every_epochs": 1, "preview_every_epochs": 2, "preview_steps": 2, "class_steps": 2,
    "train_text_encoder": True, "cache_latents": False, "use_8bit_adam": False, "offset_noise": 0.05,
}  # fmt: skip


def _project(parent: Path) -> Path:
    # 3 pictures, batch 2: the second step of each epoch has one picture, so rank 1 runs a placeholder.
    project = make_project(parent / "hero", pictures=3)
    save_concepts(project / "concept.json", [Concept(instance_token="sks", num_class_images=2)])
    return project


def _cli_args(project: Path, tiny) -> list[str]:
    sets = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    return [
        "train", str(project), "--models-dir", str(project.parent / "models"), "--device", "cpu",
        "--source", str(tiny.single_file), "--model-config", str(tiny.diffusers_dir), *sets,
    ]  # fmt: skip


def _files(parent: Path) -> list[str]:
    """The files a run wrote, event files named by kind (their names hold a time and a pid)."""
    names = []
    for path in sorted(parent.rglob("*")):
        if path.is_file():
            rel = path.relative_to(parent).as_posix()
            names.append(rel.rsplit(".", 4)[0] if "tfevents" in rel else rel)
    return sorted(names)


def _launch(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
    ]
    command = [*launcher, "-m", "lib_dbchar", *args]
    return subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


def _stop_and_resume(rank: int, world: int, port: int, spec_dict: dict, stop_after: int) -> None:
    """One process of a run stopped after ``stop_after`` steps (seen by rank 0 only) and resumed."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    spec = RunSpec.from_dict(spec_dict)
    steps = []
    ctx = JobContext(
        progress=lambda p: steps.append(p) if p.text.startswith("Step") else None,
        should_stop=lambda: len(steps) >= stop_after,
    )
    with process_group(from_environ(os.environ), "cpu") as group:
        try:
            train(spec, ctx, processes=group)
        except TrainingStopped as stopped:
            if stopped.result.step != stop_after:
                raise AssertionError(f"rank {rank} stopped at {stopped.result.step}") from None
        else:
            raise AssertionError(f"rank {rank} did not stop")
        train(spec, resume=True, processes=group)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_two_processes_train_what_one_does_and_resume_exactly(tiny_sd1, tmp_path, capsys):
    one, two = _project(tmp_path / "one"), _project(tmp_path / "two")
    assert main(_cli_args(one, tiny_sd1)) == 0
    capsys.readouterr()
    launched = _launch(_cli_args(two, tiny_sd1))
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("Finished at step 4 (epoch 2)") == 1  # rank 0 alone reports

    # The same files: class images, checkpoints, previews, logs, state.
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    assert {"models/hero_2.safetensors", "models/hero_4.safetensors"} <= set(_files(tmp_path / "one"))
    run_one, run_two = one / "runs" / "hero", two / "runs" / "hero"
    # The same training, to float rounding: losses and weights.
    log_one, log_two = (
        read_loss_log(run_one / "logging/loss.jsonl"),
        read_loss_log(run_two / "logging/loss.jsonl"),
    )
    assert [r["step"] for r in log_two] == [1, 2, 3, 4]
    assert [r["loss"] for r in log_two] == pytest.approx([r["loss"] for r in log_one], rel=1e-4)
    assert [r["prior_loss"] for r in log_two] == pytest.approx([r["prior_loss"] for r in log_one], rel=1e-4)
    assert [s for s, _ in read_scalars(run_two / "logging/dreambooth")["loss"]] == [1, 2, 3, 4]
    a, b = load_state(run_one / "state/state.pt"), load_state(run_two / "state/state.pt")
    # Gradients summed in another order differ in the last bits; Adam divides by the gradient's own
    # size, which turns that into updates of up to ~lr/100 for weights whose true gradient is ~0
    # (attention key biases). The weights themselves move by ~lr per step.
    for part in ("unet", "text_encoder"):
        for key, value in a[part].items():
            torch.testing.assert_close(b[part][key], value, rtol=0, atol=1e-4, msg=f"{part}.{key}")
    source = ldm_to_diffusers(load_single_file(tiny_sd1.single_file), kind="sd1").unet["conv_in.weight"]
    assert float((b["unet"]["conv_in.weight"] - source).abs().max()) > 2e-3  # 20x the tolerance: it trained

    assert torch.equal(a["generator"], b["generator"])  # every random draw was the same

    # Stopped after 3 steps and resumed, in 2 processes: the weights of the uninterrupted 2-process run.
    spec = load_run_spec(run_two)
    resumed = RunSpec.from_dict({**spec.to_dict(), "run_name": "resumed"})
    torch.multiprocessing.start_processes(
        _stop_and_resume, args=(2, _free_port(), resumed.to_dict(), 3), nprocs=2, start_method="spawn"
    )
    c = load_state(resumed.run_dir / "state/state.pt")
    assert c["counters"]["step"] == 4 and c["status"] == "finished"
    for part in ("unet", "text_encoder"):
        assert all(torch.equal(c[part][k], v) for k, v in b[part].items()), part
    assert [r["loss"] for r in read_loss_log(resumed.run_dir / "logging/loss.jsonl")] == [
        r["loss"] for r in log_two
    ]
    assert sorted(p.name for p in (two.parent / "models").glob("resumed_*")) == [
        "resumed_2.safetensors", "resumed_3.safetensors", "resumed_4.safetensors",
    ]  # fmt: skip
