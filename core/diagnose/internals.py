"""Looking inside the encoder: which layers and units tell failures from successes, which heads carry signal.

Activations are each transformer layer's output states, caught by a forward hook (Captum's LayerActivation
clones every output of a layer, and a DeBERTa layer returns None beside its states). Head importance is the
head-mask gradient of Michel et al. (2019): a gate of 1.0 multiplies every head's output, and the
size of the loss gradient on that gate says how much the head matters for the examples given.

The layers whose units best separate failures from successes (AUC per unit, see layer_separation) get the
adapters of the next training; head importance chooses only when there is nothing to separate (no failure, or
no success, on the selection part). Separation is measured on the very rows that failed, against the ones that
passed, forward only; head importance averages over every row of a failing class, its correct ones included.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core import model as M


def _layers(model: M.TextClassifier) -> list[torch.nn.Module]:
    return M.encoder_layers(model.encoder.get_base_model())[1]


def _head_input(layer: torch.nn.Module) -> torch.nn.Module | None:
    """The Linear that takes a layer's concatenated attention heads: the last Linear of the layer's first child
    holding any, as a layer runs its attention first (BERT `attention.output.dense`, MPNet `attention.attn.o`,
    DistilBERT `attention.out_lin`, DeBERTa-v2 `attention.output.dense`)."""
    for child in layer.children():
        found = M.linears(child)
        if found:
            return found[-1][1]
    return None


def _batches(loaded: M.Loaded, texts: list[str], batch_size: int = 32):
    dev = M.device()
    for start in range(0, len(texts), batch_size):
        enc = M.tokenize(loaded.tokenizer, texts[start:start + batch_size], loaded.max_length)
        yield start, enc["input_ids"].to(dev), enc["attention_mask"].to(dev)


def unit_auc(values: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """Per unit (column), how well its value separates failed rows from passed ones: the ROC AUC of the value as a
    score for "failed" (Mann-Whitney, ties shared), folded so 0.5 is no separation and 1.0 a perfect one whichever
    side fires higher."""
    from scipy.stats import rankdata

    ranks = rankdata(values, axis=0)
    n_failed, n_passed = int(failed.sum()), int((~failed).sum())
    auc = (ranks[failed].sum(0) - n_failed * (n_failed + 1) / 2) / (n_failed * n_passed)
    return np.maximum(auc, 1 - auc)


def layer_separation(per_layer: list[np.ndarray], failed: np.ndarray, top_units: int = 10) -> list[dict]:
    """Per layer: the mean folded AUC of its top_units most separating units (one unit can separate by chance on
    a few dozen failures; ten rarely do together), and those units."""
    out = []
    for li, values in enumerate(per_layer):
        auc = unit_auc(values, failed)
        top = np.argsort(-auc, kind="stable")[:top_units]
        out.append({"layer": li, "auc": float(auc[top].mean()),
                    "units": [{"unit": int(u), "auc": round(float(auc[u]), 4),
                               "higher_on": "failed" if values[failed, u].mean() > values[~failed, u].mean()
                               else "passed"} for u in top]})
    return out


def activation_stats(loaded: M.Loaded, texts: list[str], failed: np.ndarray, top_units: int = 5) -> pd.DataFrame:
    """Per layer: mean |activation| on failed and passed examples, the units most weakened on failures, and how well
    its units separate failures from successes (`auc`, `separating_units`: see layer_separation)."""
    model = loaded.model.to(M.device()).eval()
    layers = _layers(model)
    if not layers or failed.all() or not failed.any():
        return pd.DataFrame(columns=["layer", "mean_failed", "mean_passed", "ratio", "weak_units", "auc",
                                     "separating_units"])
    per_layer = [np.zeros((len(texts), model.encoder.config.hidden_size), dtype=np.float32) for _ in layers]
    caught: dict[int, torch.Tensor] = {}

    def catch(li):
        def hook(_module, _args, out):
            caught[li] = out[0] if isinstance(out, tuple) else out
        return hook

    handles = [layer.register_forward_hook(catch(li)) for li, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for start, ids, mask in _batches(loaded, texts):
                model(ids, mask)
                weights = mask.unsqueeze(-1).float()
                for li in range(len(layers)):
                    pooled = (caught[li].abs() * weights).sum(1) / weights.sum(1)
                    per_layer[li][start:start + len(ids)] = pooled.float().cpu().numpy()
    finally:
        for handle in handles:
            handle.remove()
    separation = layer_separation(per_layer, failed)
    rows = []
    for li, values in enumerate(per_layer):
        fail_mean, pass_mean = values[failed].mean(0), values[~failed].mean(0)
        drop = pass_mean - fail_mean
        weak = np.argsort(-drop)[:top_units]
        rows.append({"layer": li, "mean_failed": float(fail_mean.mean()), "mean_passed": float(pass_mean.mean()),
                     "ratio": float(fail_mean.mean() / max(pass_mean.mean(), 1e-9)),
                     "weak_units": [{"unit": int(u), "passed": float(pass_mean[u]), "failed": float(fail_mean[u])}
                                    for u in weak],
                     "auc": separation[li]["auc"], "separating_units": separation[li]["units"]})
    return pd.DataFrame(rows)


def head_importance(loaded: M.Loaded, texts: list[str], label_ids: list[int]) -> np.ndarray:
    """layers x heads array of mean |d loss / d gate| over the given examples (empty if unsupported)."""
    model = loaded.model.to(M.device()).eval()
    cfg = model.encoder.config
    n_heads = getattr(cfg, "num_attention_heads", 0)
    targets = [_head_input(layer) for layer in _layers(model)]
    # Without the heads' input for every layer, or a width the heads share evenly, there is no gate to put.
    if not n_heads or not texts or not targets or any(t is None or t.in_features % n_heads for t in targets):
        return np.zeros((0, 0))
    gates = torch.ones(len(targets), n_heads, device=M.device(), requires_grad=True)
    handles = []
    for li, module in enumerate(targets):
        def hook(_module, args, li=li):
            x = args[0]
            shaped = x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads) * gates[li].view(1, 1, n_heads, 1)
            return (shaped.view_as(x),) + tuple(args[1:])
        handles.append(module.register_forward_pre_hook(hook))
    try:
        total = torch.zeros_like(gates)
        for start, ids, mask in _batches(loaded, texts):
            target = torch.as_tensor(label_ids[start:start + len(ids)], device=M.device())
            loss = F.cross_entropy(model(ids, mask), target, reduction="sum")
            grad, = torch.autograd.grad(loss, gates)
            total += grad.abs()
    finally:
        for handle in handles:
            handle.remove()
    return (total / len(texts)).detach().cpu().numpy()


def choose_lora_layers(per_layer: np.ndarray, k: int, evidence: str, measure: str = "",
                       fmt: str = "{:.3g}", total: str = "") -> tuple[list[int], str]:
    """The k layers with the highest score get the LoRA adapters next time, with a reason such as
    "layers 3, 4, 5: units separating failures from successes (AUC 0.71, 0.68, 0.66)": `evidence` names the score,
    `measure` and `total` go before and after its values.

    Only the upper two thirds compete: adapting the lowest layers makes every backward pass run
    through the whole encoder, and their features are the least task-specific."""
    per_layer = np.asarray(per_layer, dtype=float)
    if per_layer.size == 0 or k <= 0:
        return [], f"no {evidence} available"
    first = len(per_layer) // 3
    candidates = np.arange(first, len(per_layer))
    chosen = sorted(int(i) for i in candidates[np.argsort(-per_layer[first:], kind="stable")[:k]])
    values = ", ".join(fmt.format(per_layer[i]) for i in chosen)
    return chosen, (f"layers {', '.join(map(str, chosen))}: {evidence} ("
                    + " ".join(x for x in (measure, values, total) if x) + ")")
