"""Reading pickled ``.ckpt`` checkpoints without ever running code from the file.

A ``.ckpt`` is a Python pickle, and unpickling can call any function the file names. dbchar reads
one in two steps and never does a full unpickle:

1. ``torch.load(weights_only=True)``: torch's own restricted loader (tensors, dicts, numbers).
2. If that refuses the file, our restricted unpickler: the same kinds of objects plus what old
   training checkpoints carry beside the weights -- numpy scalars (``global_step``) and
   PyTorch Lightning callback objects, which are replaced by inert stand-ins that keep nothing.
   Any other name the pickle asks for stops the load with a message naming it.

We only ever *read* pickles; everything dbchar writes is ``.safetensors``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from lib_dbchar.checkpoint.errors import CheckpointError, UnsupportedCheckpoint

# module -> names a checkpoint may reference. Each entry rebuilds data; none can run a command.
_ALLOWED: dict[str, frozenset[str]] = {
    "collections": frozenset({"OrderedDict"}),
    "torch._tensor": frozenset({"_rebuild_from_type_v2"}),
    "torch": frozenset({"Size", "device"}),
    "builtins": frozenset({"set", "frozenset", "object"}),
    # protocol 0/1 pickles build plain objects through this; the class it builds is checked too.
    "copyreg": frozenset({"_reconstructor"}),
    "numpy": frozenset({"dtype", "ndarray"}),
    "numpy.core.multiarray": frozenset({"scalar", "_reconstruct"}),
    "numpy._core.multiarray": frozenset({"scalar", "_reconstruct"}),
    "numpy.dtypes": frozenset({"Int64DType", "Float64DType", "Float32DType", "Int32DType"}),
    # numpy scalars pickle their bytes through this codec helper.
    "_codecs": frozenset({"encode"}),
}
# Training-time objects old checkpoints pickle beside the weights (callbacks, trainer state).
_INERT_PACKAGES = ("pytorch_lightning", "lightning", "lightning_fabric")


class LegacyObject:
    """Stands in for a training-time object (a Lightning callback) found in an old ``.ckpt``.

    It accepts whatever the pickle hands it and keeps nothing: the weights never depend on it.
    """

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def __setstate__(self, _state: Any) -> None:
        pass


class _Refused(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.split(".", maxsplit=1)[0] in _INERT_PACKAGES:
            return LegacyObject
        if name in _ALLOWED.get(module, ()) or _torch_data_name(module, name):
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def _torch_data_name(module: str, name: str) -> bool:
    """torch's tensor/parameter rebuild helpers and its dtypes (``torch.float16``)."""
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    if module == "torch":
        import torch

        return isinstance(getattr(torch, name, None), torch.dtype)
    return False


class _RestrictedPickle:
    """What ``torch.load(pickle_module=...)`` needs from a pickle module."""

    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def load_ckpt(path: Path | str) -> Any:
    """Load a pickled checkpoint with restricted unpickling only.

    Args:
        path: a ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` file written by ``torch.save``.

    Returns:
        What the file holds (usually a dict; tensors on the CPU). Files in torch's zip format
        are memory-mapped, so tensors are paged in when used.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsupportedCheckpoint: the pickle needs a name outside the allow-list (it is named; the
            file's code was not run).
        CheckpointError: the file is not a torch checkpoint or is damaged.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    mmap = zipfile.is_zipfile(path)  # torch memory-maps only its zip format
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            # torch's loader refused a name; ours knows a few harmless legacy ones more.
            return torch.load(
                str(path), map_location="cpu", pickle_module=_RestrictedPickle, weights_only=False, mmap=mmap
            )
    except _Refused as exc:
        raise UnsupportedCheckpoint(
            f"{path} is a pickled checkpoint that needs {exc.name!r} to load, which could run code from "
            "the file; dbchar does not load it. Use the model's .safetensors release, or convert this file "
            "with a tool you trust, and pick the .safetensors file."
        ) from None
    # A damaged pickle can fail in the unpickler's own bookkeeping (an empty stack, a bad opcode
    # argument): these are the errors it raises then, all meaning "not a readable checkpoint".
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        IndexError,
        KeyError,
        TypeError,
        zipfile.BadZipFile,
    ) as exc:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({exc}); re-download it or use its .safetensors "
            "release."
        ) from exc
