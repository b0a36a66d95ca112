"""Fake of modules/devices.py: the torch device and dtype the webui runs on.

The real module leaves ``device`` None until start-up picks one; the fake is "after start-up" on a
CPU-only machine. ``dtype`` stays float16 (the webui's default unless --no-half).
Fake only: ``torch_gc_calls`` counts ``torch_gc()``.
"""

import torch

cpu = torch.device("cpu")
device = cpu
device_interrogate = cpu
dtype = torch.float16
dtype_vae = torch.float16
dtype_unet = torch.float16
dtype_inference = torch.float16

torch_gc_calls = 0


def get_optimal_device_name():
    return "cpu"


def get_optimal_device():
    return torch.device(get_optimal_device_name())


def torch_gc():
    """Release cached GPU memory (the fake only counts the calls)."""
    global torch_gc_calls
    torch_gc_calls += 1
