"""Activation caching: in memory for a batch, or streamed to disk in shards for a whole dataset.

On disk, a cache is a folder of safetensors shards plus ``manifest.json``. Shards and the manifest are
written to a temporary name and renamed, so an interrupted run leaves only whole files; rerunning the
same call resumes after the last whole shard. Memory stays bounded by one batch's activations.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from .._io import atomic_write_json, read_json
from ._runner import hooked
from ._selectors import HookSelector, SelectorLike
from ._validation import InputError, check_tokens

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _store_hooks(names: Iterable[str], store: dict[str, Tensor]) -> list:
    def make(name: str):
        def hook(act: Tensor, hook) -> None:
            store[name] = act.detach()

        return hook

    return [(n, make(n)) for n in names]


@torch.no_grad()
def cache_activations(
    model, tokens: Int[Tensor, "batch pos"], selector: SelectorLike
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``model`` on ``tokens`` once; return its logits and the selected activations by hook name."""
    tokens = check_tokens(model, tokens)
    sel = HookSelector.of(selector)
    names = sel.resolve(model)
    store: dict[str, Tensor] = {}
    with hooked(model, _store_hooks(names, store)):
        logits = model(tokens)
    # A hook named outright must fire; hooks picked by a pattern may be inactive in this configuration.
    missing = [n for n in names if n not in store and n in sel.patterns]
    if missing:
        raise RuntimeError(f"these hooks did not fire during the forward pass: {missing}")
    return logits, {n: store[n] for n in names if n in store}


def _batches(tokens: Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    if isinstance(tokens, Tensor):
        yield from tokens.split(batch_size)
    else:
        yield from tokens


def _fingerprint(tokens: Tensor | Iterable[Tensor]) -> str | None:
    if not isinstance(tokens, Tensor):
        return None  # a stream of batches cannot be fingerprinted up front
    return hashlib.sha256(tokens.cpu().numpy().tobytes()).hexdigest()[:16]


def stream_activations(
    model,
    tokens: Tensor | Iterable[Tensor],
    selector: SelectorLike,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 32,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Path:
    """Cache activations for a whole dataset into ``out_dir``, one safetensors shard per batch.

    ``tokens`` is a ``[n, pos]`` tensor (split into ``batch_size`` rows) or an iterable of token batches.
    Resumable: rerunning with the same arguments skips shards already written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = HookSelector.of(selector).resolve(model)
    config = {
        "format": FORMAT_VERSION,
        "hooks": list(names),
        "batch_size": batch_size,
        "tokens": _fingerprint(tokens),
        "model": getattr(model, "mechwork_spec", None),
        "dtype": str(dtype) if dtype else None,
    }
    manifest = _read_manifest(out) if (out / MANIFEST).exists() else None
    if manifest and manifest["config"] != config:
        raise InputError(
            f"{out} already holds a cache made with other settings ({manifest['config']}); "
            "use another folder or delete it"
        )
    shards: list[dict] = manifest["shards"] if manifest else []
    done = len(shards)
    batches = _batches(tokens, batch_size)
    for index, batch in enumerate(tqdm(batches, disable=not progress, desc="caching")):
        if index < done:
            continue
        _, acts = cache_activations(model, batch, names)
        # clone: aliases (resid_post of l, resid_pre of l+1) share storage, which safetensors refuses
        tensors = {n: (a.to(dtype) if dtype else a).cpu().clone() for n, a in acts.items()}
        shard_name = f"shard-{index:06d}.safetensors"
        tmp = out / f".{shard_name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, out / shard_name)
        shards.append({"file": shard_name, "rows": int(batch.shape[0] if batch.ndim == 2 else 1)})
        atomic_write_json(out / MANIFEST, {"config": config, "shards": shards, "complete": False}, indent=2)
    atomic_write_json(out / MANIFEST, {"config": config, "shards": shards, "complete": True}, indent=2)
    return out


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    data = read_json(path, InputError, f"{folder} is not an activation cache (no {MANIFEST})")
    if not isinstance(data, dict) or "config" not in data or "shards" not in data:
        raise InputError(f"{path} is missing 'config' or 'shards'")
    version = data["config"].get("format")
    if version != FORMAT_VERSION:
        raise InputError(f"{path} has cache format {version!r}; this mechwork reads format {FORMAT_VERSION}")
    return data


@dataclass(frozen=True)
class ShardedActivations(Mapping):
    """A streamed cache on disk. ``cache[name]`` concatenates every shard; ``iter_batches`` does not."""

    folder: Path
    names: tuple[str, ...]
    shard_files: tuple[str, ...]
    rows: int
    complete: bool

    def iter_batches(self, name: str) -> Iterator[Tensor]:
        if name not in self.names:
            raise KeyError(f"{name!r} is not in this cache; it holds {list(self.names)}")
        for file in self.shard_files:
            with safe_open(str(self.folder / file), framework="pt") as fh:
                yield fh.get_tensor(name)

    def __getitem__(self, name: str) -> Tensor:
        return torch.cat(list(self.iter_batches(name)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def load_activations(folder: str | os.PathLike) -> ShardedActivations:
    path = Path(folder)
    data = _read_manifest(path)
    for shard in data["shards"]:
        if not (path / shard["file"]).is_file():
            raise InputError(f"{path} lists {shard['file']} but the file is missing")
    return ShardedActivations(
        folder=path,
        names=tuple(data["config"]["hooks"]),
        shard_files=tuple(s["file"] for s in data["shards"]),
        rows=sum(s["rows"] for s in data["shards"]),
        complete=bool(data.get("complete")),
    )
