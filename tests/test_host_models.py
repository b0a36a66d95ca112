"""Host seam for models beside checkpoints: the LoRA folder, the VAE list, the hashes the host knows.

Webui answers come from the fake webui 1.10.1 (``--lora-dir`` from the built-in Lora extension's
preload, ``sd_vae.refresh_vae_list``, ``hashes.sha256_from_cache``); standalone answers from a
models folder.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from lib_dbchar.host.base import natural_sort_key
from lib_dbchar.host.standalone import StandaloneHost
from lib_dbchar.host.webui import WebuiHost
from tests.kit.webui import write_dummy_safetensors


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- webui -----------------------------------------------------------------------------------------------
def test_webui_lora_dir_follows_the_lora_flag(fake_webui, tmp_path):
    host = WebuiHost()
    cmd_opts = fake_webui.shared.cmd_opts
    assert host.lora_dir() == fake_webui.data_dir / "models" / "Lora"  # the preload's default
    cmd_opts.lora_dir = str(tmp_path / "my loras")
    assert host.lora_dir() == tmp_path / "my loras"
    del cmd_opts.lora_dir  # the Lora extension disabled: the flag does not exist
    assert host.lora_dir() == fake_webui.data_dir / "models" / "Lora"


def test_webui_vae_files_are_what_its_vae_dropdown_lists(fake_webui, tmp_path):
    host = WebuiHost()
    models = fake_webui.data_dir / "models"
    assert host.vae_files() == []
    vae_folder = [
        touch(models / "VAE" / "kl-f8-anime2.ckpt"),
        touch(models / "VAE" / "sub" / "vae10.safetensors"),
        touch(models / "VAE" / "vae2.pt"),
    ]
    touch(models / "VAE" / "notes.txt")  # not a VAE
    beside = touch(fake_webui.models_dir / "anime" / "waifu.vae.safetensors")
    vae_dir = tmp_path / "vaes"
    extra = touch(vae_dir / "orangemix.vae.pt")
    ckpt_dir = tmp_path / "ckpts"
    in_ckpt_dir = touch(ckpt_dir / "ahri.vae.ckpt")
    touch(ckpt_dir / "plain.safetensors")  # a checkpoint there, not a VAE
    fake_webui.shared.cmd_opts.vae_dir = str(vae_dir)
    fake_webui.shared.cmd_opts.ckpt_dir = str(ckpt_dir)

    files = host.vae_files()
    assert files == [
        in_ckpt_dir,
        vae_folder[0],
        extra,
        vae_folder[2],
        vae_folder[1],
        beside,
    ]
    assert sorted(p.name for p in files) == sorted(fake_webui.module("sd_vae").vae_dict)
    # A file added later shows up on the next call (the list is rescanned, as its refresh button does).
    added = touch(models / "VAE" / "new.safetensors")
    assert added in host.vae_files()


def test_webui_known_hashes_are_its_cached_sha256_only(fake_webui):
    host = WebuiHost()
    sd_models = fake_webui.sd_models
    base = fake_webui.models_dir / "base.safetensors"
    waifu = fake_webui.models_dir / "anime" / "waifu.safetensors"
    assert host.known_hashes() == {}  # nothing hashed yet, and asking hashes nothing
    assert fake_webui.module("cache").caches.get("hashes", {}) == {}

    shorthash = sd_models.checkpoints_list["base.safetensors"].calculate_shorthash()
    expected = hashlib.sha256(base.read_bytes()).hexdigest()
    assert shorthash == expected[:10]
    assert host.known_hashes() == {str(base): expected}

    sd_models.checkpoints_list["anime/waifu.safetensors"].calculate_shorthash()
    assert host.known_hashes()[str(waifu)] == hashlib.sha256(waifu.read_bytes()).hexdigest()

    # The file changed after it was hashed: the webui's cache no longer vouches for it.
    write_dummy_safetensors(base, {"changed": "yes"})
    later = os.stat(base).st_mtime + 10
    os.utime(base, (later, later))
    assert str(base) not in host.known_hashes()
    assert str(waifu) in host.known_hashes()


# -- standalone ------------------------------------------------------------------------------------------
@pytest.fixture
def webui_layout(tmp_path):
    """A webui-style models/ with Stable-diffusion, Lora and VAE folders."""
    models = tmp_path / "models"
    touch(models / "Stable-diffusion" / "sd15.safetensors")
    touch(models / "Stable-diffusion" / "sd15.vae.pt")
    touch(models / "VAE" / "vae-ft-mse.safetensors")
    touch(models / "Lora" / "neeko.safetensors")
    return models


def test_standalone_beside_a_webui_checkpoint_folder_uses_its_siblings(webui_layout):
    host = StandaloneHost(webui_layout / "Stable-diffusion", device="cpu")
    assert host.lora_dir() == webui_layout / "Lora"
    assert host.vae_files() == [
        webui_layout / "Stable-diffusion" / "sd15.vae.pt",
        webui_layout / "VAE" / "vae-ft-mse.safetensors",
    ]
    assert [r.title for r in host.list_checkpoints()] == ["sd15.safetensors"]  # no .vae. file
    assert host.known_hashes() == {}


def test_standalone_models_folder_keeps_lora_and_vae_inside_and_out_of_the_list(tmp_path):
    models = tmp_path / "checkpoints"
    touch(models / "sd15.safetensors")
    touch(models / "VAE" / "kl.ckpt")
    touch(models / "Lora" / "neeko.safetensors")
    host = StandaloneHost(models, device="cpu")
    assert host.lora_dir() == models / "Lora"
    assert host.vae_files() == [models / "VAE" / "kl.ckpt"]
    # A LoRA or a VAE is not a checkpoint: listing them would offer files that cannot load as one.
    assert [r.title for r in host.list_checkpoints()] == ["sd15.safetensors"]


def test_natural_sort_key():
    names = ["vae10.pt", "VAE2.pt", "a.pt", "vae1.pt"]
    assert sorted(names, key=natural_sort_key) == ["a.pt", "vae1.pt", "VAE2.pt", "vae10.pt"]
