"""Fake of modules/lowvram.py: --medvram/--lowvram keep one part of the model on the GPU at a time."""

from modules import devices, shared

module_in_gpu = None


def send_everything_to_cpu():
    global module_in_gpu
    if module_in_gpu is not None:
        module_in_gpu.to(devices.cpu)
    module_in_gpu = None


def is_needed(sd_model):
    opts = shared.cmd_opts
    return bool(opts.lowvram or opts.medvram or (opts.medvram_sdxl and hasattr(sd_model, "conditioner")))


def apply(sd_model):
    enable = is_needed(sd_model)
    shared.parallel_processing_allowed = not enable
    if enable:
        setup_for_low_vram(sd_model, not shared.cmd_opts.lowvram)
    else:
        sd_model.lowvram = False


def setup_for_low_vram(sd_model, use_medvram):
    # Installing the hooks twice would be a bug in the real webui; the flag guards it.
    if getattr(sd_model, "lowvram", False):
        return
    sd_model.lowvram = True
    sd_model.lowvram_setups = getattr(sd_model, "lowvram_setups", 0) + 1
