"""The linear algebra of a LoRA update, in numpy (float64): its singular values without ever forming a d×d SVD,
its effective rank, the DoRA update as PEFT merges it, and the LoRA paper's subspace similarity.

ΔW = s·B·A with B (d_out×r), A (r×d_in) has rank ≤ r. With B = Q_B·R_B and Aᵀ = Q_A·R_A (reduced QR),
ΔW = Q_B·(s·R_B·R_Aᵀ)·Q_Aᵀ, and Q_B, Q_A have orthonormal columns, so the singular values of ΔW are those of
the r×r core, and its singular vectors are Q_B·U and Q_A·V: O((d_out + d_in)·r²) instead of O(d³).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ENERGY = 0.9  # effective rank: the fewest singular directions holding this share of ‖ΔW‖_F²


@dataclass
class LowRankSVD:
    """ΔW = U·diag(s)·Vᵀ with U (d_out×k), s descending (k ≤ r), V (d_in×k)."""
    U: np.ndarray
    s: np.ndarray
    V: np.ndarray

    @property
    def frobenius(self) -> float:
        return float(np.sqrt(np.sum(self.s ** 2)))


def lowrank_svd(B: np.ndarray, A: np.ndarray, scale: float = 1.0) -> LowRankSVD:
    """The SVD of scale·B·A through QR of B and Aᵀ and an SVD of the small core."""
    B = np.asarray(B, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    qb, rb = np.linalg.qr(B)
    qa, ra = np.linalg.qr(A.T)
    u, s, vt = np.linalg.svd(scale * (rb @ ra.T), full_matrices=False)
    return LowRankSVD(qb @ u, s, qa @ vt.T)


def effective_rank(s: np.ndarray, energy: float = ENERGY) -> int:
    """The smallest k whose top-k singular values hold at least `energy` of Σσ² (0 for a zero update)."""
    power = np.asarray(s, dtype=np.float64) ** 2
    total = power.sum()
    if total <= 0:
        return 0
    # a tiny tolerance so that exactly 90% counts as reaching it despite rounding
    return int(np.searchsorted(np.cumsum(power) / total, energy - 1e-12) + 1)


def dora_update(W: np.ndarray, B: np.ndarray, A: np.ndarray, scale: float, magnitude: np.ndarray):
    """DoRA as PEFT merges it: W' = c ⊙ (W + s·B·A), c = m / ‖W + s·B·A‖ per output row. Returns
    (‖W' − W‖_F, the SVD of the low-rank part c ⊙ s·B·A, ‖(c − 1) ⊙ W‖_F: the magnitude part). Rows are
    processed in blocks, so no second d_out×d_in matrix is held."""
    B = np.asarray(B, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    c = np.empty(W.shape[0])
    delta_sq = magnitude_sq = 0.0
    for start in range(0, W.shape[0], 1024):
        rows = slice(start, start + 1024)
        base = np.asarray(W[rows], dtype=np.float64)
        merged = base + scale * (B[rows] @ A)
        c[rows] = np.asarray(magnitude[rows], dtype=np.float64) / np.linalg.norm(merged, axis=1)
        delta_sq += float(np.sum((c[rows, None] * merged - base) ** 2))
        magnitude_sq += float(np.sum(((c[rows] - 1.0)[:, None] * base) ** 2))
    return float(np.sqrt(delta_sq)), lowrank_svd(c[:, None] * B, A, scale), float(np.sqrt(magnitude_sq))


def right_basis(A: np.ndarray) -> np.ndarray:
    """The right singular vectors of A (r×d_in) as columns (d_in×r), strongest first: U_A in Hu et al. §7."""
    _, _, vt = np.linalg.svd(np.asarray(A, dtype=np.float64), full_matrices=False)
    return vt.T


def subspace_similarity(U1: np.ndarray, U2: np.ndarray) -> np.ndarray:
    """φ(i, j) = ‖U1[:, :i]ᵀ·U2[:, :j]‖_F² / min(i, j) for i = 1..k1, j = 1..k2 (Hu et al. 2021, §7), as a
    k1×k2 array: 1 where the top-i directions of one lie inside the top-j of the other, 0 where orthogonal."""
    overlap = (np.asarray(U1).T @ np.asarray(U2)) ** 2
    cumulative = overlap.cumsum(axis=0).cumsum(axis=1)
    i = np.arange(1, overlap.shape[0] + 1)[:, None]
    j = np.arange(1, overlap.shape[1] + 1)[None, :]
    return cumulative / np.minimum(i, j)
