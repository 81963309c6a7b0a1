"""Label propagation over a k-nearest-neighbour graph of embeddings (Zhou et al., 2004).

Labeled examples and unlabeled candidates are nodes; each node's class scores flow to its
neighbours, so a candidate whose own neighbours are unlabeled traffic still gets a vote from the
labeled examples those lead to. Used twice in curation: as the nearest-neighbour verifier (labels
only) and as the self-labeling teacher (labels plus the model's own scores as a prior), which on
few-shot intent data labels traffic more accurately than the model alone.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

CHUNK = 2048


def neighbours(emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most similar other rows (cosine; embeddings are normalized): their indices and similarities,
    unordered. Chunked, so the similarity matrix's memory stays bounded."""
    n = len(emb)
    k = max(1, min(k, n - 1))
    index, sims_out = np.zeros((n, k), dtype=np.int64), np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, CHUNK):
        sims = emb[start:start + CHUNK] @ emb.T
        local = np.arange(len(sims))
        sims[local, start + local] = -np.inf  # not its own neighbour
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        index[start:start + CHUNK], sims_out[start:start + CHUNK] = nn, sims[local[:, None], nn]
    return index, sims_out


def knn_graph(emb: np.ndarray, k: int, power: float = 3.0) -> sparse.csr_matrix:
    """Symmetric normalized affinity D^-1/2 W D^-1/2 over each node's k most similar nodes (cosine)."""
    n = len(emb)
    nn, sims = neighbours(emb, k)
    rows = np.repeat(np.arange(n), nn.shape[1])
    w = sparse.csr_matrix((np.maximum(sims, 0).ravel() ** power, (rows, nn.ravel())), shape=(n, n))
    w = w + w.T
    degree = np.asarray(w.sum(1)).ravel()
    inv = sparse.diags(1.0 / np.sqrt(np.maximum(degree, 1e-12)))
    return (inv @ w @ inv).tocsr()


def propagate(labeled_emb: np.ndarray, labeled_y: np.ndarray, cand_emb: np.ndarray, num_classes: int,
              k: int = 10, alpha: float = 0.9, prior: np.ndarray | None = None, prior_weight: float = 0.3,
              iters: int = 30) -> np.ndarray:
    """Class distribution (rows sum to 1) for every candidate.

    labeled_y: class index per labeled row; prior: optional (candidates x classes) scores, e.g. the
    model's probabilities, injected at the candidates with weight prior_weight.
    """
    n_lab = len(labeled_emb)
    if len(cand_emb) == 0:
        return np.zeros((0, num_classes))
    graph = knn_graph(np.vstack([labeled_emb, cand_emb]).astype(np.float32), k)
    source = np.zeros((n_lab + len(cand_emb), num_classes))
    source[np.arange(n_lab), labeled_y] = 1.0
    if prior is not None:
        source[n_lab:] = prior_weight * prior
    scores = source.copy()
    for _ in range(iters):
        scores = alpha * (graph @ scores) + (1 - alpha) * source
    out = scores[n_lab:]
    total = out.sum(1, keepdims=True)
    uniform = np.full(num_classes, 1.0 / num_classes)
    return np.where(total > 0, out / np.maximum(total, 1e-12), uniform)
