"""Loading checkpoints for model stages: one place for quiet loading, clear errors and device choice."""

from __future__ import annotations

from typing import Callable, Collection, TypeVar

T = TypeVar("T")


def load_checkpoint(what: str, name: str, load: Callable[[], T]) -> T:
    """Run `load()` (from_pretrained calls) with transformers' progress bars off; a missing or
    unreadable checkpoint, or one of another kind (transformers raises ValueError for a config or
    tokenizer its Auto class cannot take), becomes one UserError line naming `what` and `name`."""
    from vlmforge.errors import UserError
    from vlmforge.progress import quiet_model_loading

    check_model_name(name, what)
    quiet_model_loading()
    try:
        return load()
    except OSError as e:
        raise UserError(f"cannot load {what} {name!r}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise UserError(f"cannot load {what} {name!r} (is it a {what} checkpoint?): {str(e).splitlines()[0]}") from None


def check_model_kind(what: str, name: str, kinds: Collection[str]) -> None:
    """Read only the checkpoint's config: a missing checkpoint, or one whose model type is not in `kinds`,
    is a UserError at once, before long work that the model's stage follows (it loads later)."""
    from transformers import AutoConfig

    from vlmforge.errors import UserError

    config = load_checkpoint(what, name, lambda: AutoConfig.from_pretrained(name))
    if config.model_type not in kinds:
        named = sorted(kinds)
        more = f" and {len(named) - 6} more" if len(named) > 6 else ""
        raise UserError(f"{name} is a {config.model_type!r} checkpoint, not a {what} (model types: "
                        f"{', '.join(named[:6])}{more})")


def check_model_name(name: str | None, what: str = "model") -> None:
    """Fail at once on a local model path that does not exist, instead of letting transformers take it
    for a Hub id (an invalid repo id, or minutes of network retries). A name written as a path
    (absolute, ./, ../, ~, or with two slashes) is one; `org/name` stays a Hub id unless `org/` is a
    folder here."""
    from pathlib import Path

    from vlmforge.errors import UserError

    if not name:
        return
    p = Path(name).expanduser()
    if (p / "build.json").is_file():  # transformers would say it finds no processor or model_type
        raise UserError(f"{name} is a vlmforge build (data), not a {what}")
    if p.exists():
        return
    looks_local = (name.startswith(("/", ".", "~")) or name.count("/") > 1
                   or (name.count("/") == 1 and p.parent.is_dir()))
    if looks_local:
        raise UserError(f"no model at {name} (the {what}; not a folder, and not a Hub id like org/name)")


def torch_device(device: str | None) -> str:
    """The device asked for, else cuda when present, else cpu."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_dtype(name: str) -> None:
    """A --dtype that is not one of DTYPES is a UserError (checked before any model loads)."""
    if name not in DTYPES:
        from vlmforge.errors import UserError

        raise UserError(f"unknown --dtype {name!r}; use auto, float32, bfloat16 or float16")


def torch_dtype(name: str, device: str):
    """The torch dtype for --dtype `name` on `device`: auto is bfloat16 on a GPU that supports it, else float32."""
    import torch

    check_dtype(name)
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def installed_version(package: str) -> str:
    """An installed distribution's version, "?" when it is not installed (for cache keys)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def folder_stamp(folder) -> str:
    """What identifies a model folder's contents for a cache key, cheaply (nothing is read or loaded):
    every file's relative path, size and modification time."""
    import hashlib
    from pathlib import Path

    folder = Path(folder)
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    return hashlib.sha1("".join(f"{f.relative_to(folder)}:{f.stat().st_size}:{f.stat().st_mtime_ns};"
                                for f in files).encode()).hexdigest()


def check_device(device: str) -> None:
    """A device torch does not know, or a GPU this machine lacks, fails before any model loads (torch's
    own errors come later, as tracebacks)."""
    import torch

    from vlmforge.errors import UserError

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserError(f"unknown --device {device!r}; use cpu, cuda, cuda:1, mps ...") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here (use --device cpu)")
