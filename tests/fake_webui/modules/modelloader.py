"""Fake of modules/modelloader.py: only ``load_upscalers``, which fills ``shared.sd_upscalers``.

Like the real one: one instance of every ``Upscaler`` subclass, their ``scalers`` entries listed
with None, Lanczos and Nearest first and the model upscalers after them by name.
"""

from modules import shared
from modules.upscaler import Upscaler, UpscalerLanczos, UpscalerNearest, UpscalerNone

_PLAIN = (UpscalerNone, UpscalerLanczos, UpscalerNearest)


def load_upscalers():
    data = []
    for cls in Upscaler.__subclasses__():
        data += cls().scalers
    shared.sd_upscalers = sorted(data, key=lambda x: "" if isinstance(x.scaler, _PLAIN) else x.name.lower())
