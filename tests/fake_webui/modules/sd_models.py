"""Fake of modules/sd_models.py: the checkpoint list and the loaded model.

Same names and behaviour as the real module where dbchar touches it: ``checkpoints_list`` keyed by
title (``name``, which becomes ``name [shorthash]`` once the file is hashed), ``list_models()``
scanning ``model_path`` and ``--ckpt-dir``, ``model_data.sd_model`` (look without loading) versus
``model_data.get_sd_model()`` / ``shared.sd_model`` (load if needed), ``unload_model_weights()``
that falls back to ``shared.sd_model`` (and so loads a model when none is loaded).

Fake only: a loaded model is a :class:`FakeSdModel` that records where it was moved, and
``load_count`` counts model loads.
"""

import collections
import json
import os
import re
import sys
import threading

from modules import devices, errors, hashes, lowvram, paths, script_callbacks, shared

model_dir = "Stable-diffusion"
model_path = os.path.abspath(os.path.join(paths.models_path, model_dir))

checkpoints_list = {}
checkpoint_aliases = {}
checkpoint_alisases = checkpoint_aliases
checkpoints_loaded = collections.OrderedDict()

load_count = 0


def replace_key(d, key, new_key, value):
    """Rename ``key`` to ``new_key`` keeping the dict's order."""
    keys = list(d.keys())
    d[new_key] = value
    if key not in keys:
        return d
    keys[keys.index(key)] = new_key
    reordered = {k: d[k] for k in keys}
    d.clear()
    d.update(reordered)
    return d


def read_metadata_from_safetensors(filename):
    """The ``__metadata__`` of a safetensors header; values that look like JSON objects are decoded."""
    with open(filename, mode="rb") as file:
        header_len = int.from_bytes(file.read(8), "little")
        header = file.read(header_len)
    if header_len <= 2 or header[:2] not in (b'{"', b"{'"):
        raise ValueError(f"{filename} is not a safetensors file")
    res = {}
    for key, value in json.loads(header).get("__metadata__", {}).items():
        res[key] = value
        if isinstance(value, str) and value[:1] == "{":
            try:
                res[key] = json.loads(value)
            except ValueError:
                pass
    return res


def model_hash(filename):
    """The old 8-character hash: sha256 of 64 KiB read at offset 1 MiB."""
    import hashlib

    try:
        with open(filename, "rb") as file:
            file.seek(0x100000)
            return hashlib.sha256(file.read(0x10000)).hexdigest()[0:8]
    except FileNotFoundError:
        return "NOFILE"


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        abspath = os.path.abspath(filename)
        ckpt_dir = shared.cmd_opts.ckpt_dir
        abs_ckpt_dir = os.path.abspath(ckpt_dir) if ckpt_dir is not None else None
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"

        if abs_ckpt_dir and abspath.startswith(abs_ckpt_dir):
            name = abspath.replace(abs_ckpt_dir, "")
        elif abspath.startswith(model_path):
            name = abspath.replace(model_path, "")
        else:
            name = os.path.basename(filename)
        name = name.lstrip("\\/")

        self.metadata = {}
        self.modelspec_thumbnail = None
        if self.is_safetensors:
            try:
                self.metadata = read_metadata_from_safetensors(filename)
                self.modelspec_thumbnail = self.metadata.pop("modelspec.thumbnail", None)
            except (OSError, ValueError) as e:
                errors.display(e, f"reading metadata for {filename}")

        self.name = name
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = model_hash(filename)
        self.sha256 = hashes.sha256_from_cache(self.filename, f"checkpoint/{name}")
        self.shorthash = self.sha256[0:10] if self.sha256 else None
        self.title = name if self.shorthash is None else f"{name} [{self.shorthash}]"
        short = self.name_for_extra
        self.short_title = short if self.shorthash is None else f"{short} [{self.shorthash}]"
        self.ids = [self.hash, self.model_name, self.title, name, self.name_for_extra, f"{name} [{self.hash}]"]
        if self.shorthash:
            self.ids += [self.shorthash, self.sha256, f"{name} [{self.shorthash}]",
                         f"{self.name_for_extra} [{self.shorthash}]"]

    def register(self):
        checkpoints_list[self.title] = self
        for alias in self.ids:
            checkpoint_aliases[alias] = self

    def calculate_shorthash(self):
        """Hash the file; the title (and so the checkpoints_list key) becomes ``name [shorthash]``."""
        self.sha256 = hashes.sha256(self.filename, f"checkpoint/{self.name}")
        if self.sha256 is None:
            return None
        shorthash = self.sha256[0:10]
        if self.shorthash == shorthash:
            return self.shorthash
        self.shorthash = shorthash
        if shorthash not in self.ids:
            self.ids += [shorthash, self.sha256, f"{self.name} [{shorthash}]", f"{self.name_for_extra} [{shorthash}]"]
        old_title = self.title
        self.title = f"{self.name} [{shorthash}]"
        self.short_title = f"{self.name_for_extra} [{shorthash}]"
        replace_key(checkpoints_list, old_title, self.title, self)
        self.register()
        return self.shorthash


def checkpoint_tiles(use_short=False):
    return [x.short_title if use_short else x.title for x in checkpoints_list.values()]


def _walk_checkpoints(place):
    if not place or not os.path.isdir(place):
        return []
    found = []
    for root, _dirs, files in os.walk(place, followlinks=True):
        for filename in files:
            path = os.path.join(root, filename)
            lower = filename.lower()
            if not lower.endswith((".ckpt", ".safetensors")) or lower.endswith((".vae.ckpt", ".vae.safetensors")):
                continue
            found.append(path)
    return sorted(found)


def list_models():
    """Rescan the checkpoint folders; titles of files already hashed carry ``[shorthash]``."""
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    cmd_ckpt = shared.cmd_opts.ckpt
    if cmd_ckpt and os.path.exists(cmd_ckpt):
        info = CheckpointInfo(cmd_ckpt)
        info.register()
        shared.opts.data["sd_model_checkpoint"] = info.title
    seen = []
    for place in (model_path, shared.cmd_opts.ckpt_dir):
        for path in _walk_checkpoints(place):
            if path not in seen:
                seen.append(path)
                CheckpointInfo(path).register()


re_strip_checksum = re.compile(r"\s*\[[^]]+]\s*$")


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    info = checkpoint_aliases.get(search_string, None)
    if info is not None:
        return info
    found = sorted([i for i in checkpoints_list.values() if search_string in i.title], key=lambda x: len(x.title))
    if found:
        return found[0]
    stripped = re.sub(re_strip_checksum, "", search_string)
    found = sorted([i for i in checkpoints_list.values() if stripped in i.title], key=lambda x: len(x.title))
    return found[0] if found else None


def select_checkpoint():
    """The checkpoint the settings name, else the first one; FileNotFoundError when there is none."""
    wanted = shared.opts.sd_model_checkpoint
    info = checkpoint_aliases.get(wanted, None)
    if info is not None:
        return info
    if not checkpoints_list:
        raise FileNotFoundError(f"No checkpoints found. When searching for checkpoints, looked at:\n"
                                f" - directory {model_path}")
    return next(iter(checkpoints_list.values()))


class FakeSdModel:
    """Stands in for the loaded LatentDiffusion model. Fake only: ``moves`` lists every ``.to()``."""

    def __init__(self, checkpoint_info):
        self.sd_checkpoint_info = checkpoint_info
        self.sd_model_checkpoint = checkpoint_info.filename
        self.filename = checkpoint_info.filename
        self.sd_model_hash = checkpoint_info.shorthash
        self.device = devices.cpu
        self.moves = []

    def to(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        self.device = target
        self.moves.append(str(target))
        return self


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False
        self.lock = threading.Lock()

    def get_sd_model(self):
        """The loaded model; loads one first if none was ever loaded (what ``shared.sd_model`` calls)."""
        if self.was_loaded_at_least_once:
            return self.sd_model
        if self.sd_model is None:
            with self.lock:
                if self.sd_model is not None or self.was_loaded_at_least_once:
                    return self.sd_model
                try:
                    load_model()
                except Exception as e:
                    errors.display(e, "loading stable diffusion model", full_traceback=True)
                    print("Stable diffusion model failed to load", file=sys.stderr)
                    self.sd_model = None
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        if v in self.loaded_sd_models:
            self.loaded_sd_models.remove(v)
        if v is not None:
            self.loaded_sd_models.insert(0, v)


model_data = SdModelData()


def send_model_to_cpu(m):
    if m is not None:
        if m.lowvram:
            lowvram.send_everything_to_cpu()
        else:
            m.to(devices.cpu)
    devices.torch_gc()


def model_target_device(m):
    return devices.cpu if lowvram.is_needed(m) else devices.device


def send_model_to_device(m):
    lowvram.apply(m)
    if not m.lowvram:
        m.to(shared.device)


def send_model_to_trash(m):
    m.to(device="meta")
    devices.torch_gc()


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    """Load a checkpoint as the current model (fake: a FakeSdModel; counts in ``load_count``)."""
    global load_count
    checkpoint_info = checkpoint_info or select_checkpoint()
    if model_data.sd_model is not None:
        send_model_to_trash(model_data.sd_model)
        model_data.sd_model = None
    load_count += 1
    sd_model = FakeSdModel(checkpoint_info)
    lowvram.apply(sd_model)
    if not sd_model.lowvram:
        sd_model.to(shared.device)
    model_data.set_sd_model(sd_model)
    model_data.was_loaded_at_least_once = True
    shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    checkpoint_info = info or select_checkpoint()
    if not sd_model:
        sd_model = model_data.sd_model
    if sd_model is not None and sd_model.sd_model_checkpoint == checkpoint_info.filename and not forced_reload:
        return sd_model
    return load_model(checkpoint_info)


def unload_model_weights(sd_model=None, info=None):
    # Faithful trap: with no argument this reads shared.sd_model, which loads a model if none is loaded.
    send_model_to_cpu(sd_model or shared.sd_model)
    return sd_model
