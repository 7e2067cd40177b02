"""The Fréchet distance between two Gaussians, and the statistics it needs.

numpy and scipy's public LAPACK/BLAS wrappers, float64. No Inception here, so tests
can check the maths on known Gaussians.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from utils import UserError


def compute_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of `features` (N, D), both float64.

    The covariance is the unbiased one (N - 1 in the denominator), as in pytorch-fid.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise UserError(f"need at least 2 feature vectors of shape (N, D) to estimate a "
                        f"covariance, got shape {features.shape}; use at least 2 images")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _symmetric(a: np.ndarray) -> np.ndarray:
    # Covariances from np.cov or an .npz can be asymmetric by rounding; make both
    # triangles agree before a product reads the whole matrix.
    a = np.asarray(a, dtype=np.float64)
    return (a + a.T) / 2


def psd_factor(a: np.ndarray) -> np.ndarray:
    """F (D, r) with F @ F.T = a, for a symmetric PSD `a` (D, D) of numerical rank r.

    LAPACK's pivoted Cholesky (dpstrf, reading the lower triangle) stops at the numerical
    rank, so a covariance of N <= D samples gives r = N - 1 columns and no epsilon is needed.
    """
    factor, piv, rank, info = lapack.dpstrf(np.asarray(a, dtype=np.float64), lower=1)
    if info < 0:
        raise ValueError(f"dpstrf: argument {-info} is invalid")
    f = np.empty((len(a), rank))
    f[piv - 1] = np.tril(factor)[:, :rank]  # a[piv][:, piv] = L L^T, so a = F F^T with F = P L
    return f


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD sigma1, sigma2, exactly, in float64.

    sigma1 @ sigma2 is not symmetric, but it is similar to the symmetric PSD matrix
    sqrt(sigma1) @ sigma2 @ sqrt(sigma1), so both have the same non-negative eigenvalues
    and tr(sqrtm(sigma1 @ sigma2)) = sum(sqrt(eig)). Any factor sigma1 = F F^T (F is
    D x r) gives a symmetric PSD matrix with those eigenvalues, F^T sigma2 F, for `eigh`:
    - sigma1 positive definite (more images than dimensions): F is its Cholesky factor,
      and LAPACK's generalized symmetric eigensolver (type 2, which forms F^T sigma2 F
      without inverting anything) does it all in one call;
    - otherwise F is the pivoted Cholesky factor at sigma1's numerical rank r, and
      F^T sigma2 F is only r x r.
    Eigenvalues that rounding makes slightly negative are clamped to 0.
    """
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    try:
        evals = scipy.linalg.eigh(sigma2, sigma1, type=2, eigvals_only=True, driver="gvx",
                                  check_finite=False)
    except np.linalg.LinAlgError:  # sigma1 is singular
        f = psd_factor(sigma1)
        evals = scipy.linalg.eigh(f.T @ _symmetric(sigma2) @ f, eigvals_only=True, driver="evr",
                                  check_finite=False)
    return float(np.sqrt(np.clip(evals, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray,
                     mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):

        d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 @ sigma2))

    computed in float64 through a Cholesky factor and a symmetric eigenproblem (see
    `trace_sqrt_product`), so singular covariances need no epsilon and there is no
    complex part to discard. Returns d^2 (what is called "FID"), clamped at 0 against
    rounding.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise UserError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                        f"sigma {sigma1.shape} vs {sigma2.shape}; compute both with the same "
                        f"feature extractor and dims")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise UserError("statistics contain NaN or inf; recompute them from the images "
                        "(a corrupt .npz or non-finite features)")
    diff = mu1 - mu2
    d = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float(d), 0.0)


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The classic pytorch-fid computation with the general `scipy.linalg.sqrtm` of the
    non-symmetric product (an epsilon on the diagonal when it fails, the complex part
    dropped): the reference the tests and benchmarks hold `frechet_distance` to.
    About 15 s at 2048-d on this 2-core CPU."""
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns on singular products; handled below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(sigma1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))
