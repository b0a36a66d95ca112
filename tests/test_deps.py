"""The dependency policy: planner, torch-build detection, constraints, TOML fallback, runtime check."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lib_dbchar import deps

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"

# A webui 1.10.1 venv as its launcher leaves it: torch 2.1.2+cu121 from the pytorch index, the
# pinned host packages, no diffusers, no onnxruntime.
WEBUI_VENV = {
    "torch": "2.1.2+cu121",
    "numpy": "1.26.2",
    "Pillow": "9.5.0",
    "safetensors": "0.4.2",
    "transformers": "4.30.2",
    "accelerate": "0.21.0",
    "huggingface_hub": "0.36.2",
    "protobuf": "3.20.0",
    "gradio": "3.41.2",
    "pip": "24.0",
}
EVERYTHING = {**WEBUI_VENV, "diffusers": "0.31.0", "onnxruntime": "1.23.2"}


@pytest.fixture(scope="module")
def policy() -> deps.Policy:
    return deps.load_policy(PYPROJECT)


def plan_for(policy: deps.Policy, installed: dict[str, str], **kwargs) -> deps.Plan:
    return deps.make_plan(policy.requirements, policy.rules, installed, **kwargs)


def specs(plan: deps.Plan) -> list[str]:
    return [i.spec for i in plan.installs]


# ---------------------------------------------------------------- the planner on the real policy


def test_fresh_webui_venv_adds_diffusers_range_and_cpu_onnxruntime(policy):
    plan = plan_for(policy, WEBUI_VENV)

    assert specs(plan) == ["diffusers>=0.31.0,<0.32", "onnxruntime>=1.17"]
    # The webui's default torch is CUDA 12 with cuDNN 8: PyPI has no onnxruntime-gpu for that.
    ort = plan.item("onnxruntime")
    assert "CUDA 12 build" in ort.reason and "cuDNN 8" in ort.reason
    assert "no onnxruntime-gpu on PyPI is built for that" in ort.reason
    assert plan.item("transformers").reason == "host-owned, present at 4.30.2: left alone"
    assert plan.warnings == []


def test_everything_present_installs_nothing(policy):
    plan = plan_for(policy, EVERYTHING)

    assert plan.installs == []
    assert plan.warnings == []
    assert plan.item("diffusers").action == deps.OK
    assert plan.item("diffusers").reason == "present at 0.31.0"
    assert {i.action for i in plan.items} == {deps.OK, deps.LEFT_ALONE}


@pytest.mark.parametrize(
    ("torch", "extra", "expected"),
    [
        ("2.4.1+cu124", {}, "onnxruntime-gpu>=1.19,<1.27"),
        ("2.0.1+cu118", {}, "onnxruntime-gpu>=1.17,<1.19"),
        ("2.9.0+cu130", {}, "onnxruntime-gpu>=1.27"),
        # PyPI's Linux torch has no local version; NVIDIA's runtime wheels give it away.
        ("2.5.1", {"nvidia-cuda-runtime-cu12": "12.4.127", "nvidia-cudnn-cu12": "9.1.0.70"},
         "onnxruntime-gpu>=1.19,<1.27"),
        ("2.9.0", {"nvidia-cuda-runtime": "13.0.48", "nvidia-cudnn-cu13": "9.13.0.50"},
         "onnxruntime-gpu>=1.27"),
    ],
)
def test_cuda_torch_gets_the_matching_gpu_build(policy, torch, extra, expected):
    plan = plan_for(policy, {**WEBUI_VENV, "torch": torch, **extra})

    assert specs(plan) == ["diffusers>=0.31.0,<0.32", expected]
    assert "so the GPU build" in plan.item("onnxruntime").reason


@pytest.mark.parametrize(
    ("torch", "extra", "why"),
    [
        ("2.1.2+cu121", {}, "no onnxruntime-gpu on PyPI"),  # cuDNN 8 with CUDA 12
        ("2.4.1+cu118", {}, "no onnxruntime-gpu on PyPI"),  # CUDA 11 with cuDNN 9
        ("2.13.0+cpu", {}, "not a CUDA build"),
        ("2.3.1+rocm6.0", {}, "not a CUDA build"),
        ("2.5.1", {}, "no NVIDIA CUDA runtime wheel"),  # Windows/macOS PyPI wheel
    ],
)
def test_other_torch_builds_get_the_cpu_onnxruntime(policy, torch, extra, why):
    plan = plan_for(policy, {**WEBUI_VENV, "torch": torch, **extra})

    assert specs(plan)[-1] == "onnxruntime>=1.17"
    assert why in plan.item("onnxruntime").reason


@pytest.mark.parametrize(("torch", "keep"),
                         [("2.4.1+cu124", "onnxruntime-gpu"), ("2.13.0+cpu", "onnxruntime")])
def test_both_onnxruntime_builds_present_warns_with_the_fix(policy, torch, keep):
    installed = {**EVERYTHING, "torch": torch, "onnxruntime": "1.23.2", "onnxruntime-gpu": "1.22.0"}
    plan = plan_for(policy, installed, python="/venv/bin/python")

    assert plan.installs == []
    item = plan.item("onnxruntime")
    assert item.action == deps.LEFT_ALONE
    assert "onnxruntime 1.23.2 and onnxruntime-gpu 1.22.0 are both installed" in item.warning
    assert "/venv/bin/python -m pip uninstall -y onnxruntime onnxruntime-gpu" in item.warning
    version = installed[keep]
    assert item.warning.endswith(f"/venv/bin/python -m pip install --no-deps {keep}=={version}")


def test_fix_command_quotes_an_interpreter_path_with_spaces(policy):
    installed = {**EVERYTHING, "onnxruntime-gpu": "1.22.0"}
    plan = plan_for(policy, installed, python=r"C:\Stable Diffusion\venv\Scripts\python.exe")

    warning = plan.item("onnxruntime").warning
    assert r'"C:\Stable Diffusion\venv\Scripts\python.exe" -m pip uninstall' in warning


def test_gpu_build_alone_satisfies_the_requirement_even_with_cpu_torch(policy):
    installed = {**EVERYTHING, "torch": "2.13.0+cpu"}
    del installed["onnxruntime"]
    installed["onnxruntime-gpu"] = "1.23.2"
    plan = plan_for(policy, installed)

    assert plan.installs == []
    assert plan.item("onnxruntime").reason == "present as onnxruntime-gpu 1.23.2"


def test_too_old_gpu_build_is_left_alone_with_a_warning(policy):
    installed = {**EVERYTHING, "onnxruntime-gpu": "1.15.1"}
    del installed["onnxruntime"]
    plan = plan_for(policy, installed)

    assert plan.installs == []
    assert plan.item("onnxruntime").warning == (
        "onnxruntime-gpu 1.15.1 is installed but dbchar needs onnxruntime>=1.17: left alone, "
        "the WD14 tagger (automatic captions) may not work")


def test_missing_host_owned_package_is_added(policy):
    installed = dict(EVERYTHING)
    del installed["safetensors"]
    plan = plan_for(policy, installed)

    assert specs(plan) == ["safetensors>=0.4.2"]
    assert plan.item("safetensors").reason.startswith("host-owned but missing altogether")


def test_too_old_host_owned_package_is_left_alone_with_a_warning(policy):
    plan = plan_for(policy, {**EVERYTHING, "transformers": "4.25.1"})

    item = plan.item("transformers")
    assert plan.installs == []
    assert item.action == deps.LEFT_ALONE
    assert item.reason == "host-owned, present at 4.25.1: left alone"
    assert item.warning == ("transformers 4.25.1 is installed but dbchar needs transformers>=4.30.2: "
                            "left alone, training (the text encoder) may not work")


def test_too_old_package_of_ours_is_left_alone_too(policy):
    plan = plan_for(policy, {**EVERYTHING, "diffusers": "0.25.0"})

    assert plan.installs == []
    assert plan.item("diffusers").action == deps.LEFT_ALONE
    warning = plan.item("diffusers").warning
    assert "diffusers 0.25.0 is installed but dbchar needs diffusers>=0.31.0" in warning


def test_newer_diffusers_than_the_when_missing_range_is_fine(policy):
    plan = plan_for(policy, {**EVERYTHING, "diffusers": "0.35.2"})

    assert plan.item("diffusers").action == deps.OK
    assert plan.warnings == []


def test_missing_torch_blocks_every_install(policy):
    installed = {"pip": "24.0"}
    plan = plan_for(policy, installed)

    assert plan.installs == []
    assert plan.item("torch").action == deps.SKIP
    assert "never installs it" in plan.item("torch").warning
    held = plan.item("diffusers")
    assert held.action == deps.SKIP and held.missing
    assert held.reason.startswith("skipped until torch is installed")


def test_unreadable_installed_version_is_left_alone(policy):
    plan = plan_for(policy, {**EVERYTHING, "numpy": "1.26.2-weird build"})

    assert plan.installs == []
    assert "has a version pip cannot read" in plan.item("numpy").warning


def test_installed_prerelease_inside_the_range_counts(policy):
    plan = plan_for(policy, {**EVERYTHING, "diffusers": "0.32.0.dev0"})

    assert plan.item("diffusers").action == deps.OK


def test_marker_that_does_not_apply_is_skipped():
    rules = deps.InstallRules()
    plan = deps.make_plan(["colorama>=0.4; sys_platform == 'win32'"], rules, {},
                          marker_env={"sys_platform": "linux"})

    assert plan.installs == []
    assert plan.items[0].reason.startswith("skipped: not needed here")


def test_plan_line_format(policy):
    plan = plan_for(policy, {**WEBUI_VENV, "transformers": "4.25.1"})

    assert plan.item("diffusers").line().startswith('diffusers: install "diffusers>=0.31.0,<0.32" (missing; ')
    lines = plan.item("transformers").line().splitlines()
    assert lines == ["transformers: host-owned, present at 4.25.1: left alone",
                     "    WARNING: transformers 4.25.1 is installed but dbchar needs transformers>=4.30.2: "
                     "left alone, training (the text encoder) may not work"]


_NAMES = ["torch", "numpy", "pillow", "safetensors", "transformers", "accelerate", "huggingface-hub",
          "diffusers", "onnxruntime", "onnxruntime-gpu", "nvidia-cuda-runtime-cu12", "nvidia-cudnn-cu12"]
_VERSIONS = st.sampled_from(["0.1", "1.0", "1.17.0", "2.1.2+cu121", "2.4.0+cu124", "2.13.0+cpu", "9.1.0",
                             "12.4.127", "0.32.0.dev0", "not-a-version", "100.0"])


@settings(max_examples=300, deadline=None)
@given(installed=st.dictionaries(st.sampled_from(_NAMES), _VERSIONS))
def test_never_installs_anything_present(policy, installed):
    plan = plan_for(policy, installed)

    for item in plan.installs:
        name = canonicalize_name(Requirement(item.spec).name)
        assert name not in installed
        assert item.name not in installed
        if item.name == "onnxruntime":  # never one build beside the other
            assert not {"onnxruntime", "onnxruntime-gpu"} & set(installed)
    if "torch" not in installed:
        assert plan.installs == []
    for item in plan.items:
        assert item.missing == (item.action in (deps.INSTALL, deps.SKIP))


# ---------------------------------------------------------------- torch build detection


@pytest.mark.parametrize(
    ("installed", "cuda", "cudnn", "key"),
    [
        ({"torch": "2.1.2+cu121"}, 12, 8, "cu12-cudnn8"),
        ({"torch": "2.4.0+cu118"}, 11, 9, "cu11-cudnn9"),
        ({"torch": "1.13.1+cu117"}, 11, 8, "cu11-cudnn8"),
        ({"torch": "2.9.0+cu130"}, 13, 9, "cu13-cudnn9"),
        ({"torch": "2.1.2", "nvidia-cuda-runtime-cu12": "12.1.105", "nvidia-cudnn-cu12": "8.9.2.26"}, 12, 8,
         "cu12-cudnn8"),
        ({"torch": "2.13.0+cpu"}, None, None, None),
        ({"torch": "2.3.1+rocm6.0"}, None, None, None),
        ({"torch": "2.5.1"}, None, None, None),
        ({"torch": "2.5.1+cpu", "nvidia-cuda-runtime-cu12": "12.4.127"}, None, None, None),  # local wins
        ({}, None, None, None),
    ],
)
def test_detect_torch_build(installed, cuda, cudnn, key):
    build = deps.detect_torch_build(installed)

    assert (build.cuda_major, build.cudnn_major, build.key) == (cuda, cudnn, key)
    assert build.version == installed.get("torch")
    assert build.how


def test_detect_torch_build_explains_itself():
    assert deps.detect_torch_build({}).how == "torch is not installed"
    assert deps.detect_torch_build({"torch": "2.13.0+cpu"}).how == "torch 2.13.0+cpu is not a CUDA build"
    how = deps.detect_torch_build({"torch": "2.1.2+cu121"}).how
    assert how == "torch 2.1.2+cu121 is a CUDA 12 build with cuDNN 8 (torch before 2.4 bundles cuDNN 8)"


# ---------------------------------------------------------------- constraints


def test_constraints_pin_every_installed_distribution():
    installed = {"torch": "2.13.0+cpu", "protobuf": "3.20.0", "huggingface-hub": "0.36.2", "zipp": "3.20.0"}
    constraints = deps.make_constraints(installed)

    pins = [line for line in constraints.text.splitlines() if not line.startswith("#")]
    assert pins == ["huggingface-hub==0.36.2", "protobuf==3.20.0", "torch==2.13.0+cpu", "zipp==3.20.0"]
    assert constraints.pinned == 4
    assert constraints.unpinnable == ()
    for pin in pins:  # each one is a requirement pip accepts, matching exactly the installed version
        req = Requirement(pin)
        assert req.specifier.contains(installed[req.name], prereleases=True)


def test_constraints_leave_out_what_pip_cannot_express():
    constraints = deps.make_constraints({"numpy": "1.26.2", "oldegg": "1.0-custom build", "_bad name": "1.0"})

    assert "numpy==1.26.2" in constraints.text
    assert "oldegg" not in constraints.text
    assert constraints.unpinnable == ("_bad name 1.0", "oldegg 1.0-custom build")
    assert constraints.pinned == 1


# ---------------------------------------------------------------- rules and pyproject


def test_rules_from_the_real_pyproject(policy):
    rules = policy.rules

    assert {"torch", "huggingface-hub", "pillow", "protobuf"} <= rules.host_owned
    assert rules.when_missing == {"diffusers": "diffusers>=0.31.0,<0.32"}
    assert rules.never_install == {"torch"}
    assert rules.gpu_builds["onnxruntime"]["cu12-cudnn9"] == "onnxruntime-gpu>=1.19,<1.27"
    assert rules.feature("Pillow") == "image preparation"
    assert rules.feature("something-else") == "what needs something-else"
    # Every requirement has a feature, so messages never fall back to the generic phrase.
    for text in policy.requirements:
        assert canonicalize_name(Requirement(text).name) in rules.features


def test_rules_reject_unknown_keys_and_wrong_specs():
    with pytest.raises(ValueError, match=r"unknown key\(s\) host_owend"):
        deps.InstallRules.from_table({"host_owend": []})
    with pytest.raises(ValueError, match="does not install diffusers"):
        deps.InstallRules.from_table({"when_missing": {"diffusers": "transformers<5"}})
    with pytest.raises(ValueError, match="is not a requirement"):
        deps.InstallRules.from_table({"gpu_builds": {"onnxruntime": {"cu12-cudnn9": "onnxruntime-gpu>>1"}}})


def test_fallback_toml_parser_equals_tomllib_on_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+: the reference the fallback must match
    text = PYPROJECT.read_text(encoding="utf-8")

    assert deps.parse_toml_subset(text) == tomllib.loads(text)


@pytest.mark.parametrize(
    "snippet",
    [
        'a = "x"\nb = \'lit\\eral\'\nc = 3\nd = -1_000\ne = 1.5\nf = true\ng = false\n',
        '[t]\n"quoted key" = 1\ndotted.key = "v"\n  [t.sub]  # comment\n  x = [1, 2,]\n',
        'arr = [\n  "a",  # one\n  # a comment line\n  "b",\n]\nnested = [[1, 2], ["x"]]\n',
        'inline = { a = 1, b.c = "d", "e f" = [1] }\nempty = {}\nempty_arr = []\n',
        'esc = "tab\\tquote\\"back\\\\slash\\u00e9\\U0001F600"\n',
        "win = 1\r\n[x]\r\ny = 2\r\n",
        '[a.b]\nc = 1\n[a]\nd = 2\n',
    ],
)
def test_fallback_toml_parser_agrees_with_tomllib(snippet):
    tomllib = pytest.importorskip("tomllib")
    assert deps.parse_toml_subset(snippet) == tomllib.loads(snippet)


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ('a = """multi"""\n', "line 1: multi-line strings"),
        ("x = 1\n[[tables]]\n", "line 2: arrays of tables"),
        ("a = 1\na = 2\n", "line 2: key 'a' defined twice"),
        ("[t]\n[t]\n", "line 2: table [t] defined twice"),
        ("d = 1979-05-27\n", "line 1: expected the end of the line"),
        ('s = "open\n', "line 1: unterminated string"),
        ("a = 1 b = 2\n", "line 1: expected the end of the line"),
    ],
)
def test_fallback_toml_parser_names_the_line_it_cannot_read(snippet, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        deps.parse_toml_subset(snippet)


# ---------------------------------------------------------------- metadata and the runtime check


def _dist_info(site: Path, name: str, version: str | None, folder: str | None = None) -> None:
    info = site / (folder or f"{name.replace('-', '_')}-{version}.dist-info")
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1"] + ([f"Name: {name}"] if name else []) + (
        [f"Version: {version}"] if version else [])
    (info / "METADATA").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_read_installed_first_on_the_path_wins(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _dist_info(first, "Typing_Extensions", "4.16.0")
    _dist_info(second, "typing-extensions", "4.0.0")
    _dist_info(second, "torch", "2.13.0+cpu")
    _dist_info(second, "", "1.0", folder="broken-1.0.dist-info")
    _dist_info(second, "noversion", None, folder="noversion-1.0.dist-info")
    (second / "empty-1.0.dist-info").mkdir()

    found = deps.read_installed([str(first), str(second)])

    assert found == {"typing-extensions": "4.16.0", "torch": "2.13.0+cpu"}


def test_check_installed_lists_missing_and_wrong_versions(policy):
    installed = {**EVERYTHING, "transformers": "4.25.1"}
    del installed["diffusers"]

    problems = deps.check_installed(PYPROJECT, installed)

    assert len(problems) == 2
    assert problems[0].startswith("transformers 4.25.1 is installed but dbchar needs transformers>=4.30.2")
    assert problems[1].startswith("diffusers is missing: training, class images and checkpoint conversion "
                                  "unavailable. Restart the webui")
    assert str(deps.INSTALL_PY) in problems[1]


def test_check_installed_is_empty_when_all_is_well():
    assert deps.check_installed(PYPROJECT, EVERYTHING) == []


def test_deps_loads_by_path_without_the_package(tmp_path):
    """install.py loads deps.py alone: it must not import lib_dbchar, torch or anything heavy."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        before = set(sys.modules)
        spec = importlib.util.spec_from_file_location("probe_deps", {str(ROOT / "lib_dbchar" / "deps.py")!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules["probe_deps"] = module
        spec.loader.exec_module(module)
        new = set(sys.modules) - before
        heavy = ("lib_dbchar", "torch", "gradio", "modules", "numpy")
        print(sorted(m for m in new if m.split(".")[0] in heavy))
        print(module.load_policy({str(PYPROJECT)!r}).rules.when_missing)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "{'diffusers': 'diffusers>=0.31.0,<0.32'}"]
