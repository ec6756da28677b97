"""A low-rank matrix kept as its two factors: ``A @ B`` with A (..., m, k) and B (..., k, n), k small.

The circuits of Elhage et al. 2021 are such products: W_Q W_K^T and W_V W_O are (C x C) of rank at most the head
width D, and the vocabulary-sized ones (W_E W_Q W_K^T W_E^T) are too large to form whole for a real vocabulary.
Norms, eigenvalues and products are computed through the factors, in the (k x k) space where possible.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FactoredMatrix"]


class FactoredMatrix:
    """``A @ B`` over leading batch dimensions (layers, heads, ...), never formed unless :attr:`AB` is asked for."""

    def __init__(self, A: Tensor, B: Tensor) -> None:
        if A.ndim < 2 or B.ndim < 2 or A.shape[-1] != B.shape[-2]:
            raise ValueError(f"factors must be (..., m, k) and (..., k, n), got {tuple(A.shape)} and {tuple(B.shape)}")
        self.A, self.B = A, B

    @property
    def shape(self) -> torch.Size:
        """The product's shape, (..., m, n)."""
        batch = torch.broadcast_shapes(self.A.shape[:-2], self.B.shape[:-2])
        return torch.Size((*batch, self.A.shape[-2], self.B.shape[-1]))

    @property
    def AB(self) -> Tensor:
        """The whole (..., m, n) product."""
        return self.A @ self.B

    @property
    def T(self) -> FactoredMatrix:
        """The transpose, (B^T, A^T)."""
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix:
        """Right product, kept factored through the smaller inner dimension."""
        if isinstance(other, FactoredMatrix):
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix:
        return FactoredMatrix(other @ self.A, self.B)

    def norm(self) -> Tensor:
        """Frobenius norm of the product, (...): sqrt(trace((A^T A)(B B^T))), in the (k x k) space."""
        gram_a = self.A.transpose(-2, -1) @ self.A  # (..., k, k)
        gram_b = self.B @ self.B.transpose(-2, -1)  # (..., k, k)
        return (gram_a * gram_b).sum((-2, -1)).clamp(min=0).sqrt()

    def eigenvalues(self) -> Tensor:
        """The product's k largest eigenvalues (complex, (..., k)): the nonzero ones of AB are those of BA (k x k),
        padded with zeros where m > k. Only for a square product."""
        if self.A.shape[-2] != self.B.shape[-1]:
            raise ValueError(f"eigenvalues need a square product, this one is {tuple(self.shape)}")
        return torch.linalg.eigvals((self.B @ self.A).double())

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, inner={self.A.shape[-1]})"
