"""Fake of modules/upscaler.py: the upscalers Extras (and dbchar) offer, as ``shared.sd_upscalers``.

Each ``UpscalerData`` entry has a ``name``, a ``data_path`` (the model file, None for the plain
ones) and a ``scaler`` whose ``upscale(img, scale, selected_model)`` behaves like the real one: the
target size is the scaled size rounded DOWN to a multiple of 8; ``do_upscale`` runs up to three
times until the picture reaches it (a 4x model runs once for 2x), stopping early when
``shared.state.interrupted``; a last Lanczos resize lands on the target size.

Fake only: ``FakeModelUpscaler`` ("Fake 4x", standing in for ESRGAN & co.) enlarges 4x per pass
with nearest-neighbour pixels, so its output is recognisable, and records every pass in ``calls``
as ``(input size, data_path)``.
"""

from PIL import Image

from modules import shared

calls = []


class Upscaler:
    name = None

    def __init__(self, dirname=None):
        self.scale = 1
        self.user_path = dirname
        self.scalers = []

    def do_upscale(self, img, selected_model):
        return img

    def upscale(self, img, scale, selected_model=None):
        self.scale = scale
        target_w = int((img.width * scale) // 8 * 8)
        target_h = int((img.height * scale) // 8 * 8)
        for attempt in range(3):
            if img.width >= target_w and img.height >= target_h and (attempt > 0 or scale != 1):
                break
            if shared.state.interrupted:
                break
            before = img.size
            img = self.do_upscale(img, selected_model)
            if img.size == before:
                break
        if img.size != (target_w, target_h):
            img = img.resize((target_w, target_h), resample=Image.Resampling.LANCZOS)
        return img


class UpscalerData:
    def __init__(self, name, path, upscaler=None, scale=4, model=None):
        self.name = name
        self.data_path = path
        self.local_data_path = path
        self.scaler = upscaler
        self.scale = scale
        self.model = model

    def __repr__(self):
        return f"<UpscalerData name={self.name} path={self.data_path} scale={self.scale}>"


class UpscalerNone(Upscaler):
    name = "None"

    def __init__(self, dirname=None):
        super().__init__(dirname)
        self.scalers = [UpscalerData("None", None, self)]


class UpscalerLanczos(Upscaler):
    def __init__(self, dirname=None):
        super().__init__(dirname)
        self.name = "Lanczos"
        self.scalers = [UpscalerData("Lanczos", None, self)]

    def do_upscale(self, img, selected_model=None):
        size = (int(img.width * self.scale), int(img.height * self.scale))
        return img.resize(size, resample=Image.Resampling.LANCZOS)


class UpscalerNearest(Upscaler):
    def __init__(self, dirname=None):
        super().__init__(dirname)
        self.name = "Nearest"
        self.scalers = [UpscalerData("Nearest", None, self)]

    def do_upscale(self, img, selected_model=None):
        size = (int(img.width * self.scale), int(img.height * self.scale))
        return img.resize(size, resample=Image.Resampling.NEAREST)


class FakeModelUpscaler(Upscaler):
    """Fake only: a "model" upscaler with a fixed 4x factor per pass, like an ESRGAN model."""

    def __init__(self, dirname=None):
        super().__init__(dirname)
        self.name = "Fake"
        self.scalers = [UpscalerData("Fake 4x", "models/Fake/fake-4x.pth", self)]

    def do_upscale(self, img, selected_model=None):
        calls.append((img.size, selected_model))
        return img.resize((img.width * 4, img.height * 4), resample=Image.Resampling.NEAREST)
