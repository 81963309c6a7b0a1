"""The training loop, written out: forward, loss, backward, clip, step, log, evaluate, checkpoint.

Accelerate owns devices and processes only, so the same loop runs on a CPU here, on a GPU, and on
many GPUs or nodes with `accelerate launch -m core.train SPEC.json`.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from core import atomic, model as M
from core.config import DoctorConfig, ModelConfig, TrainConfig
from core.doctor import Doctor, eval_interval
from core.faults import crash_point

LOG_EVERY = 10
KEEP_CHECKPOINTS = 2


@dataclass
class TrainSpec:
    run_id: str
    labels: list[str]
    model: dict
    train: dict
    train_file: str  # parquet with text, label (and optional weight)
    eval_file: str  # parquet with text, label
    checkpoint_dir: str
    output_dir: str
    db: str | None = None  # where step metrics go; None: nowhere
    extra: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        atomic.write_json(path, asdict(self), indent=2)

    @staticmethod
    def load(path: Path) -> "TrainSpec":
        return TrainSpec(**json.loads(Path(path).read_text(encoding="utf-8")))


# -- checkpoints: safetensors for tensors, JSON for the rest, never pickle -----------------------
def _save_checkpoint(folder: Path, step: int, model, optimizer, best: dict, doctor: dict) -> None:
    shutil.rmtree(folder / f"step_{step}", ignore_errors=True)  # a checkpoint of the same step is the same state
    with atomic.new_folder(folder / f"step_{step}") as tmp:
        save_file(M.trainable_state(model), str(tmp / "weights.safetensors"))
        opt = optimizer.state_dict()
        tensors, scalars = {}, {}
        for pid, state in opt["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{pid}.{key}"] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "param_groups": opt["param_groups"], "scalars": scalars, "best": best,
                 "doctor": doctor}
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
    crash_point("checkpoint_saved")
    for old in _checkpoints(folder)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _checkpoints(folder: Path) -> list[Path]:
    found = [p for p in Path(folder).glob("step_*") if p.is_dir() and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def _load_checkpoint(path: Path, model, optimizer) -> dict:
    M.load_trainable_state(model, load_file(str(path / "weights.safetensors")))
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(path / "optimizer.safetensors"))
    opt_state: dict = {}
    for key, value in list(tensors.items()) + list(state["scalars"].items()):
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    return state


# -- pieces of the loop -----------------------------------------------------------------------------
class LengthGroupedSampler(torch.utils.data.Sampler):
    """A shuffled order in which neighbouring rows have similar token lengths.

    Batches pad to their longest row; random batches of short queries pad to about three times their
    real tokens (Banking77), so grouping by length cuts the compute of a step. Rows are shuffled,
    sorted by length within windows of 50 batches, cut into batches, and the batches shuffled again.
    Deterministic for a (seed, epoch), so a resumed run skips exactly the batches it had done."""

    WINDOW = 50

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = np.asarray(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:  # accelerate calls this through its loader's set_epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        window = self.batch_size * self.WINDOW
        batches = []
        for start in range(0, len(order), window):
            part = order[start:start + window]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        for b in rng.permutation(len(batches)):
            yield from batches[b].tolist()


def _prototype_head(model: M.TextClassifier, tokenizer, texts, label_ids, num_labels, max_length,
                    warmup_steps: int, row_weights: np.ndarray | None = None, bf16: bool = False) -> None:
    """Start the head at each class's (weighted) mean embedding, then fit it on the frozen embeddings (cheap:
    the encoder runs once), so LoRA training starts from a good linear probe instead of a random head."""
    emb = M.embed_texts(tokenizer, model, list(texts), max_length, bf16=bf16)
    row_weights = np.ones(len(emb)) if row_weights is None else np.asarray(row_weights, dtype=float)
    weight = np.random.default_rng(0).normal(0, 0.01, size=(num_labels, emb.shape[1])).astype(np.float32)
    for c in range(num_labels):
        mine = (label_ids == c) & (row_weights > 0)
        if mine.any():
            weight[c] = np.average(emb[mine], axis=0, weights=row_weights[mine])
    head = torch.nn.Parameter(torch.from_numpy(weight))
    if warmup_steps and len(emb) and row_weights.sum() > 0:
        feats, target = torch.from_numpy(emb), torch.as_tensor(np.array(label_ids))
        w = torch.tensor(np.asarray(row_weights, dtype=np.float32))
        opt = torch.optim.Adam([head], lr=0.01)
        for _ in range(warmup_steps):
            per_row = F.cross_entropy(model.scale * feats @ F.normalize(head, dim=-1).T, target, reduction="none")
            loss = (per_row * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        model.head.weight.copy_(head.detach())


@torch.no_grad()
def _evaluate(model, tokenizer, texts, label_ids, max_length, dev, bf16: bool = False) -> tuple[float, float]:
    model.eval()
    losses, correct = [], 0
    for start in range(0, len(texts), 128):
        batch = M.tokenize(tokenizer, texts[start:start + 128], max_length)
        target = torch.as_tensor(label_ids[start:start + 128], device=dev)
        with M.autocast(bf16):
            logits = model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev)).float()
        losses.append(F.cross_entropy(logits, target, reduction="sum").item())
        correct += int((logits.argmax(-1) == target).sum())
    model.train()
    return sum(losses) / max(len(texts), 1), correct / max(len(texts), 1)


class _MetricSink:
    """Buffers step metrics and writes them in batches from the main process only."""

    def __init__(self, spec: TrainSpec, active: bool):
        self.rows: list[tuple[int, str, float, float]] = []
        self.store = None
        if active and spec.db:
            from core.store import Store

            self.store = Store(Path(spec.db))
        self.run_id = spec.run_id

    def add(self, step: int, name: str, value: float, epoch: float) -> None:
        self.rows.append((step, name, float(value), float(epoch)))

    def event(self, step: int, kind: str, detail: str) -> None:
        if self.store:
            self.store.record_train_event(self.run_id, step, kind, detail)

    def flush(self) -> None:
        if self.store and self.rows:
            self.store.record_metrics(self.run_id, self.rows)
        self.rows = []


def train(spec: TrainSpec, progress: bool = True) -> dict:
    mcfg, tcfg = ModelConfig(**spec.model), TrainConfig(**spec.train)
    doctor = Doctor(DoctorConfig(**spec.extra.get("doctor", {})))
    inject_nan = set(spec.extra.get("inject_nan_steps", []))  # tests: the doctor must survive these
    # cpu=True on a machine without CUDA lets torchrun-style launches form a gloo process group.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    set_seed(tcfg.seed)
    label_index = {name: i for i, name in enumerate(spec.labels)}
    data = pd.read_parquet(spec.train_file)
    held = pd.read_parquet(spec.eval_file)
    train_ids = data["label"].map(label_index).to_numpy()
    eval_texts, eval_ids = held["text"].tolist(), held["label"].map(label_index).to_numpy().copy()

    tokenizer, model = M.build(mcfg, len(spec.labels))
    ckpt_dir = Path(spec.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # A row's weight in the loss: how sure its labeling teacher was (1 for seed and human labels).
    # A row without one (a file written by hand, an older run's) counts fully.
    row_weights = data["weight"].fillna(1.0).to_numpy(dtype=float) if "weight" in data else np.ones(len(data))
    _prototype_head(model, tokenizer, data["text"].tolist(), train_ids, len(spec.labels), mcfg.max_length,
                    tcfg.head_warmup_steps, row_weights, bf16=mcfg.precision == "auto")

    items = list(zip(data["text"].tolist(), train_ids.tolist(), row_weights.tolist()))

    def collate(batch):
        enc = M.tokenize(tokenizer, [t for t, _, _ in batch], mcfg.max_length)
        enc["labels"] = torch.tensor([y for _, y, _ in batch])
        enc["weights"] = torch.tensor([w for _, _, w in batch], dtype=torch.float32)
        return enc

    lengths = [len(ids) for ids in tokenizer(data["text"].tolist(), truncation=True,
                                             max_length=mcfg.max_length)["input_ids"]]
    loader = DataLoader(items, batch_size=tcfg.batch_size, collate_fn=collate,
                        sampler=LengthGroupedSampler(lengths, tcfg.batch_size, tcfg.seed))
    head_params = list(model.head.parameters())
    lora_params = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": lora_params, "lr": tcfg.lr, "weight_decay": tcfg.weight_decay},
        {"params": head_params, "lr": tcfg.head_lr, "weight_decay": 0.0},
    ])
    steps_per_epoch = math.ceil(len(items) / (tcfg.batch_size * accelerator.num_processes))
    total = tcfg.max_steps or max(1, math.ceil(tcfg.epochs * steps_per_epoch))
    warmup = int(total * tcfg.warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    step, best = 0, {"acc": -1.0, "loss": math.inf, "step": 0}
    found = _checkpoints(ckpt_dir)
    if found:  # resume after a crash or a kill: the checkpoint's weights, optimizer and position
        state = _load_checkpoint(found[-1], model, optimizer)
        step, best = state["step"], state["best"]
        doctor.restore(state.get("doctor"))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    sink = _MetricSink(spec, accelerator.is_main_process)
    base_lrs = [tcfg.lr, tcfg.head_lr]
    unwrapped = accelerator.unwrap_model(model)
    best_path = ckpt_dir / "best.safetensors"
    started = time.time()
    eval_every = eval_interval(total, doctor.cfg, tcfg.eval_every)

    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, desc="training", disable=not (progress and accelerator.is_main_process),
               leave=False)
    def snapshot():
        return step, M.trainable_state(unwrapped), copy.deepcopy(optimizer.state_dict())

    def agree(flag: bool) -> bool:
        """Every process takes the same branch: one sick rank makes all of them act."""
        if accelerator.num_processes == 1:
            return flag
        return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)

    last_good = snapshot()
    recent_losses: list[float] = []
    stopped, stop_reason = False, None
    model.train()
    while step < total and not stopped:
        epoch = step // steps_per_epoch
        loader.set_epoch(epoch)
        skip = step - epoch * steps_per_epoch
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in epoch_loader:
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * schedule(step) * doctor.lr_scale
            with M.autocast(mcfg.precision == "auto"):
                logits = model(batch["input_ids"], batch["attention_mask"])
            per_row = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=tcfg.label_smoothing,
                                      reduction="none")
            loss = (per_row * batch["weights"]).sum() / batch["weights"].sum().clamp_min(1e-8)
            if step + 1 in inject_nan:
                loss = loss * float("nan")
            finding = doctor.check_step(loss.item())
            if agree(finding is not None):
                # A sick step is never applied: back to the last good weights, then gentler settings.
                finding = finding or doctor.check_step(float("nan"))
                sink.event(step + 1, finding.kind, finding.detail)
                optimizer.zero_grad(set_to_none=True)
                if finding.action == "stop":
                    sink.event(step + 1, "early_stop", f"{finding.kind}: training stopped by the doctor")
                    stopped, stop_reason = True, finding.kind
                    break
                good_step, weights, opt_state = last_good
                M.load_trainable_state(unwrapped, weights)
                optimizer.load_state_dict(opt_state)
                sink.event(step + 1, "rollback", f"weights of step {good_step} restored; learning rate x"
                                                 f"{doctor.lr_scale:.3g}, clip norm x{doctor.clip_scale:.3g}")
                step += 1
                bar.update(1)
                continue
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm * doctor.clip_scale)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            recent_losses = (recent_losses + [loss.item()])[-LOG_EVERY:]
            ep = step / steps_per_epoch
            if accelerator.is_main_process and (step % LOG_EVERY == 0 or step == total):
                sink.add(step, "train_loss", loss.item(), ep)
                sink.add(step, "lr", optimizer.param_groups[0]["lr"], ep)
                sink.add(step, "grad_norm", float(grad_norm), ep)
                sink.flush()
            stop_now, improved = False, False
            if step % eval_every == 0 or step == total:
                if accelerator.is_main_process:
                    val_loss, val_acc = _evaluate(unwrapped, tokenizer, eval_texts, eval_ids, mcfg.max_length,
                                                  accelerator.device, bf16=mcfg.precision == "auto")
                    sink.add(step, "val_loss", val_loss, ep)
                    sink.add(step, "val_acc", val_acc, ep)
                    sink.flush()
                    # Equal accuracy on the small selection part: the lower loss, the more confident state, wins.
                    if val_acc > best["acc"] or (val_acc == best["acc"] and val_loss < best.get("loss", math.inf)):
                        best = {"acc": val_acc, "loss": val_loss, "step": step}
                        state = M.trainable_state(unwrapped)
                        atomic.write_with(best_path, lambda tmp: save_file(state, str(tmp)))
                    train_avg = sum(recent_losses) / len(recent_losses) if recent_losses else None
                    verdict = doctor.check_eval(val_loss, train_avg, val_acc)
                    improved = doctor.evals_without_gain == 0
                    if verdict is not None and step < total:
                        sink.event(step, verdict.kind, verdict.detail)
                        sink.event(step, "early_stop", f"{verdict.kind}: stopped at step {step} of {total}; the best "
                                                       f"state (step {best['step']}, val acc {best['acc']:.4f}) kept")
                        stop_now, stop_reason = True, verdict.kind
                stop_now = agree(stop_now)
                if agree(improved):  # a rollback returns to a state the validation set vouched for
                    last_good = snapshot()
            if accelerator.is_main_process and (step % tcfg.checkpoint_every == 0):
                _save_checkpoint(ckpt_dir, step, unwrapped, optimizer, best, doctor.state())
            accelerator.wait_for_everyone()
            if stop_now:
                stopped = True
                break
            if step >= total:
                break
    bar.close()
    result = {"steps": step, "total_steps": total, "eval_every": eval_every, "stopped_early": stopped,
              "stop_reason": stop_reason, "rollbacks": doctor.rollbacks,
              "best_val_acc": best["acc"], "best_step": best["step"],
              "seconds": time.time() - started, "processes": accelerator.num_processes,
              "train_rows": len(items)}
    if accelerator.is_main_process:
        # The version keeps the best validation state seen, not merely the last one.
        if best_path.exists():
            M.load_trainable_state(unwrapped, load_file(str(best_path)))
        memory = None
        if mcfg.memory_weight > 0:  # what it trained on, embedded by the state it keeps
            memory = M.build_memory(unwrapped, tokenizer, data["text"].tolist(), train_ids, row_weights, mcfg)
            result["memory_rows"] = len(memory.emb)
        files = M.save_version(unwrapped, spec.labels, mcfg, Path(spec.output_dir), memory)
        result["files"] = files
        atomic.write_json(Path(spec.checkpoint_dir) / "result.json", result)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: accelerate launch -m core.train SPEC.json", file=sys.stderr)
        return 2
    train(TrainSpec.load(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
