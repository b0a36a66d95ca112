"""Fake of modules/shared_items.py: list helpers, and the trick that makes ``shared.sd_model`` load.

The real webui swaps the class of the ``modules.shared`` module object for one with an
``sd_model`` property; reading it calls ``sd_models.model_data.get_sd_model()``, which LOADS a
checkpoint when none is loaded yet. Extensions must read ``sd_models.model_data.sd_model`` instead.
"""

import sys


def refresh_checkpoints():
    import modules.sd_models

    return modules.sd_models.list_models()


def list_checkpoint_tiles(use_short=False):
    import modules.sd_models

    return modules.sd_models.checkpoint_tiles(use_short)


class Shared(sys.modules["modules.shared"].__class__):
    sd_model_val = None

    @property
    def sd_model(self):
        import modules.sd_models

        return modules.sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        import modules.sd_models

        modules.sd_models.model_data.set_sd_model(value)


sys.modules["modules.shared"].__class__ = Shared
