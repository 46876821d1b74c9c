"""A direction on disk: one directory, whatever method made it.

::

    direction.safetensors   diff (layers x hidden): mean of the positive examples minus the
                            negative ones, per layer; pos_mean, neg_mean (layers x hidden)
    direction.json          model identity, method, source data, counts, per-layer norms and
                            held-out separation (AUROC), the suggested layer, the file's sha256

``waluigi direction extract`` names the directory by the hash of what made it, so a path
always means the same vectors; a steered model's identity holds the file's sha256 all the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.runs import atomic_path, write_atomic

TENSORS = "direction.safetensors"
MANIFEST = "direction.json"


@dataclass
class Direction:
    path: Path  # the directory
    diff: Any  # torch tensor, layers x hidden (float32)
    manifest: dict
    sha256: str

    @property
    def layers(self) -> int:
        return int(self.diff.shape[0])

    @property
    def best_layer(self) -> int:
        return int(self.manifest.get("best_layer", self.layers // 2))

    def vector(self, layer: int | None = None):
        """The raw mean difference at ``layer`` (default: the suggested one)."""
        return self.diff[self.best_layer if layer is None else layer % self.layers]

    def unit(self, layer: int | None = None):
        import torch

        v = self.vector(layer)
        norm = torch.linalg.vector_norm(v)
        if float(norm) == 0:
            raise UserError(f"direction {self.path}: layer {layer} is the zero vector; it has no direction to use")
        return v / norm


def _sha256(path: Path) -> str:
    from waluigi.models.kinds import _file_sha256

    return _file_sha256(path)


def save_direction(out: Path, tensors: dict[str, Any], manifest: dict) -> Direction:
    """Write ``tensors`` (``diff`` required) and ``manifest`` atomically into ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / TENSORS) as tmp:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    sha = _sha256(out / TENSORS)
    manifest = {**manifest, "sha256": sha, "layers": int(tensors["diff"].shape[0]),
                "hidden_size": int(tensors["diff"].shape[1])}
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
    return Direction(path=out, diff=tensors["diff"].detach().float().cpu(), manifest=manifest, sha256=sha)


def direction_dir(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p.parent if p.name in (TENSORS, MANIFEST) else p


def load_direction(path: str | Path) -> Direction:
    """A direction directory (or its ``direction.safetensors``); a missing or damaged one is a
    UserError that names it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = direction_dir(path)
    tensors_path = where / TENSORS
    if not tensors_path.is_file():
        raise UserError(f"direction {path}: no {TENSORS} there (make one with `waluigi direction extract`)")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"direction {tensors_path}: not a readable safetensors file ({exc})") from exc
    if "diff" not in tensors or tensors["diff"].ndim != 2:
        raise UserError(f"direction {tensors_path}: expected a 2-d tensor 'diff' (layers x hidden)")
    try:
        manifest = json.loads((where / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = {}
    return Direction(path=where, diff=tensors["diff"].float(), manifest=manifest, sha256=_sha256(tensors_path))


def random_like(direction: Direction, out: Path, seed: int = 0) -> Direction:
    """A control: per layer a Gaussian random vector of the same norm as ``direction``'s."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(direction.diff.shape, generator=generator)
    diff = noise / torch.linalg.vector_norm(noise, dim=1, keepdim=True) * torch.linalg.vector_norm(
        direction.diff, dim=1, keepdim=True)
    manifest = {"method": "random", "like": str(direction.path), "like_sha256": direction.sha256, "seed": seed,
                "best_layer": direction.best_layer, "model": direction.manifest.get("model"),
                "norms": [float(torch.linalg.vector_norm(v)) for v in diff]}
    return save_direction(out, {"diff": diff}, manifest)


def cosines(a: Direction, b: Direction) -> list[float]:
    """Cosine similarity of two directions, layer by layer."""
    import torch

    if a.diff.shape != b.diff.shape:
        raise UserError(f"directions {a.path} ({tuple(a.diff.shape)}) and {b.path} ({tuple(b.diff.shape)}) "
                        "are of different models; cosines need the same layers and hidden size")
    return [float(x) for x in torch.nn.functional.cosine_similarity(a.diff, b.diff, dim=1)]
