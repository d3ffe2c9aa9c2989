"""How alike two adapters of the same base are, module by module: the LoRA paper's subspace similarity
(Hu et al. 2021, §7) between the input directions each adapter learned."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from . import spectrum
from .report import AdapterReport, ModuleUpdate

BASES = {"A": "right singular vectors of A, as in the paper",
         "delta": "right singular vectors of ΔW, ordered by how much of the update each carries"}


@dataclass
class ModuleSimilarity:
    name: str
    module: str
    layer: int | None
    phi: np.ndarray           # φ(i, j), i = 1..k1 (first adapter), j = 1..k2
    d: int                    # the input dimension both bases live in

    @property
    def overlap(self) -> float:
        """φ(k1, k2): the share of the smaller subspace that lies inside the larger one."""
        return float(self.phi[-1, -1])

    @property
    def random_overlap(self) -> float:
        """What φ(k1, k2) is on average for random subspaces of these sizes: max(k1, k2) / d."""
        return min(1.0, max(self.phi.shape) / self.d)

    def to_dict(self) -> dict:
        return {"name": self.name, "module": self.module, "layer": self.layer, "r1": self.phi.shape[0],
                "r2": self.phi.shape[1], "overlap": self.overlap, "random_overlap": self.random_overlap,
                "top_direction": float(self.phi[0, 0]), "phi": self.phi.round(6).tolist()}


def _basis(m: ModuleUpdate, basis: str) -> np.ndarray:
    return spectrum.right_basis(m.A) if basis == "A" else m.svd.V


def similarity(first: AdapterReport, second: AdapterReport, basis: str = "A") -> list[ModuleSimilarity]:
    """φ for every module both adapters adapt, in the first adapter's order."""
    if basis not in BASES:
        raise ModelError(f"basis {basis!r} is not known; allowed: {', '.join(BASES)}")
    others = {m.name: m for m in second.modules}
    common = [m for m in first.modules if m.name in others]
    if not common:
        raise ModelError("these adapters adapt no module in common (different bases or target modules)")
    out = []
    for m in common:
        o = others[m.name]
        if o.shape != m.shape:
            raise ModelError(f"{m.name}: shapes differ ({m.shape} vs {o.shape}): adapters of different bases")
        out.append(ModuleSimilarity(m.name, m.module, m.layer,
                                    spectrum.subspace_similarity(_basis(m, basis), _basis(o, basis)), m.shape[1]))
    return out
