"""Workspace settings: one pydantic object holds every knob, read from and written to `config.toml`."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"


class _Section(BaseModel):
    # A misspelt key must be refused, not silently ignored: extra="forbid". NaN passes every bound check
    # (every comparison with it is false) and infinity is not JSON: allow_inf_nan=False.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    text_col: str = "text"
    label_col: str = "label"
    max_text_chars: int = Field(10_000, gt=0)
    max_file_bytes: int = Field(500_000_000, gt=0)
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    # Share of each class's held-out rows that selection may use (checkpoint choice, early stopping,
    # diagnosis, scaffold search); the rest grades the gates and nothing else. Drawn once at init and
    # stored, so every cycle's gate reads the same untouched rows.
    # 0.25 leaves 4 of 5 rows a class to the gate: the forgetting test needs 3 broken answers of one class to
    # stand out at all among 150 classes, so the gate part gets the larger share.
    selection_fraction: float = Field(0.25, gt=0, lt=1)
    # The traffic probe: a share of the unlabeled rows (at most probe_max_rows) that nothing trains on or
    # labels. The held-out rows are drawn apart from traffic and can be easier (on Banking77 they read 3-4
    # points high); the probe's confidences carry the gate rows' accuracy over to traffic. A pool under
    # probe_min_pool rows keeps every row for curation.
    probe_fraction: float = Field(0.15, ge=0, lt=1)
    probe_max_rows: int = Field(1000, ge=0)
    probe_min_pool: int = Field(200, ge=0)
    seed: int = Field(0, ge=0)


class ModelConfig(_Section):
    base_model: str = BUNDLED_MODEL
    max_length: int = Field(64, ge=8, le=512)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    # Empty: LoRA adapts every Linear of the chosen transformer layers (attention projections and feed-forward),
    # whatever the architecture calls them. Otherwise names (or dotted suffixes) of Linear modules inside a layer,
    # e.g. ["query", "value"] on BERT or ["q", "v"] on MPNet; a name the base model lacks is refused.
    target_modules: list[str] = []
    # LoRA on the top N transformer layers only (0: all): backward then stops there, which is
    # what makes CPU training affordable.
    lora_layers: int = Field(3, ge=0)
    # Explicit layer indices for LoRA; set per cycle by the head analysis (empty: the top lora_layers).
    # Each must exist in the base model: core.model.check_lora_layers, where the model's config is at hand.
    lora_layer_ids: list[Annotated[int, Field(ge=0)]] = []
    # Cosine-similarity head scale: logits = scale * cos(embedding, class weight).
    head_scale: float = Field(20.0, gt=0)
    # A version's memory (core.model.Memory): the share of the k nearest training rows' vote in its predictions.
    # 0 saves no memory: the head alone predicts.
    memory_weight: float = Field(0.5, ge=0, le=1)
    memory_k: int = Field(10, ge=1, le=200)
    memory_temperature: float = Field(0.05, gt=0, le=10)
    # "auto": train and embed in bfloat16 where the hardware computes it natively (CUDA; a CPU with AVX-512 BF16
    # or AMX), else fp32; "fp32": always fp32 (bit-for-bit the same results on every machine).
    precision: Literal["auto", "fp32"] = "auto"


class TrainConfig(_Section):
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(0, ge=0)  # 0: as many as the epochs need
    batch_size: int = Field(32, ge=1)
    # Measured on the Banking77 seed (dev test): 5e-4/2e-3 83.4%, 2e-4/1e-3 83.5%, 1e-3 x5 epochs 83.0%.
    lr: float = Field(2e-4, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # Smoothing hurt the cosine head on few-shot intent data (Banking77 dev: 83.4% without, 81.5% with 0.1).
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # How much each pseudo-labeled sample counts in the loss: its labeling teacher's confidence, or 1 for all.
    # Measured on Banking77 (pool labeled by both views, student on frozen MiniLM, dev test): all labels at
    # weight 1 87.13%, weighted by confidence 87.60%; keeping only each class's most confident 60-90% 85.4-86.9%.
    pseudo_label_weight: Literal["teacher_confidence", "none"] = "teacher_confidence"
    # Verified data accumulates (core/curate/replay.py): samples earlier cycles kept, and people did not reject,
    # train every later candidate, each counting accumulated_weight times its own label weight, at most
    # accumulated_per_class of them per class (the newest cycles' first). false: seed and this cycle's samples only.
    accumulate: bool = True
    accumulated_weight: float = Field(0.5, gt=0, le=1)
    accumulated_per_class: int = Field(200, ge=0)
    # Full-batch steps fitting the head on frozen embeddings before LoRA training starts (0: none).
    head_warmup_steps: int = Field(100, ge=0)
    checkpoint_every: int = Field(50, ge=1)
    # 0: sized to the run, enough evaluations for the doctor's stops to fire (core.doctor.eval_interval)
    eval_every: int = Field(0, ge=0)
    num_processes: int = Field(1, ge=1)  # >1 runs `accelerate launch` in a subprocess
    seed: int = Field(0, ge=0)


class DoctorConfig(_Section):
    """The training doctor's rules: what counts as a sick loss curve and how hard to respond."""
    enabled: bool = True
    spike_factor: float = Field(3.0, gt=1)  # loss above this multiple of its running average: divergence
    spike_min_delta: float = Field(1.0, ge=0)  # ...and at least this far above it (nats)
    ema_alpha: float = Field(0.1, gt=0, le=1)
    lr_backoff: float = Field(0.3, gt=0, lt=1)  # learning rate multiplier after each rollback
    clip_backoff: float = Field(0.5, gt=0, le=1)  # gradient-clipping norm multiplier after each rollback
    max_rollbacks: int = Field(10, ge=0)
    plateau_patience: int = Field(3, ge=1)  # evaluations without val-loss improvement before stopping
    plateau_min_delta: float = Field(1e-3, ge=0)
    gap_max: float = Field(1.0, gt=0)  # val loss minus train loss above this, and widening: overfitting
    gap_patience: int = Field(3, ge=1)


class DiagnoseConfig(_Section):
    max_attributions: int = Field(300, ge=0)  # misclassified held-out examples attributed, at most
    correct_attributions: int = Field(30, ge=0)  # and a sample of correct ones, for contrast
    attribution_steps: int = Field(16, ge=2)  # integrated-gradients steps
    max_clusters: int = Field(8, ge=0)
    samples_per_error: int = Field(20, ge=1)  # how many curated samples each explained error asks for
    top_findings: int = Field(20, ge=1)
    head_analysis: bool = True  # head importance, shown; it picks the LoRA layers where activations cannot ("layers")
    # Evidence beyond the selection rows (core/diagnose/evidence.py): a draw of this many traffic texts that the
    # seed's k-NN vote labels with at least traffic_min_agreement of its votes (0: none); people's label answers
    # the version did not train on are always used.
    traffic_rows: int = Field(1000, ge=0, le=100_000)
    traffic_min_agreement: float = Field(0.6, gt=0, le=1)
    # What a diagnosis steers in the next cycle (bench/README "Which links of the loop help"): "asks" its error
    # patterns (confused pairs, weak classes) ask the generators for samples and harder mixes; "attributions" the
    # words Captum found in the errors are what counterfactuals vary (else distinctive terms); "clusters" the traffic
    # nearest its error clusters goes first to self-labeling and the label queue; "layers" activations (or heads)
    # choose the layers that get LoRA (else the top model.lora_layers). Empty: findings are shown and steer nothing.
    # "layers" is not a default: on Banking77 (bench/README, issue 28 ablation) the layers it chose from 77 selection
    # rows cost 0.26 points in cycle 1 (86.27% against 86.53% on the top layers; an earlier run: 0.5 points).
    acts: list[Literal["asks", "attributions", "clusters", "layers"]] = ["asks", "attributions", "clusters"]


class LLMConfig(_Section):
    """An OpenAI-compatible chat-completions endpoint; off unless enabled."""
    enabled: bool = False
    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1 ; EVOLAB_LLM_BASE_URL overrides
    model: str = ""  # EVOLAB_LLM_MODEL overrides
    api_key_env: str = "EVOLAB_LLM_API_KEY"  # the key is read from this environment variable, never stored
    per_request: int = Field(10, ge=1, le=100)
    max_requests: int = Field(10, ge=0)
    timeout_s: float = Field(30.0, gt=0)
    max_tokens: int = Field(1024, ge=1)  # per answer; bounds what one request costs
    # What the texts are, in a few words ("messages customers send a bank"); the prompts name it. Empty: they
    # describe the texts by the workspace's label names alone.
    domain: str = ""
    examples_per_label: int = Field(3, ge=0, le=20)  # of the workspace's seed texts, shown per label in a prompt


class CurateConfig(_Section):
    # sql_migrations (core/curate/sql_migrations.py) is not a default: it writes SQL, for the
    # `init --preset sql-migrations` skill.
    generators: list[Literal["self_label", "counterfactual", "templates", "llm", "feedback", "sql_migrations"]] = [
        "self_label", "counterfactual", "templates", "llm", "feedback"]
    # Who labels traffic: the model's probabilities smoothed by label propagation over the embedding
    # graph, or the model alone. Banking77 pool, labels from a cycle-1 model: model 87.4%, propagation 88.0%.
    teacher: Literal["propagation", "model"] = "propagation"
    # A frozen second view (core/curate/views.py): a local encoder folder or a known offline extra such as
    # "all-mpnet-base-v2" (requirements-encoders.txt). Its graph carries the model's scores and its neighbours
    # verify; empty: the model's own embeddings do both.
    teacher_encoder: str = ""
    propagation_alpha: float = Field(0.9, gt=0, lt=1)  # how far scores flow through the graph
    propagation_prior_weight: float = Field(0.3, ge=0)  # weight of the model's own scores at each text
    # What happens to a teacher's labels of traffic (self_label): "verify" keeps them only when every verifier
    # clears its bar, like written samples; "weigh" keeps them all (filters still apply), each weighing in
    # training by the teacher's confidence, and verifies only the classes a rejection held back.
    # Banking77, cycle 1 on the dev test (bench/README): verify 85.67%, weigh 86.80%; with the MPNet view 86.07/87.47%.
    pseudo_labels: Literal["verify", "weigh"] = "weigh"
    # Verifier bars: a sample is kept only when every verifier clears its bar for the sample's label.
    # On that pool, model >= 0.5 and knn >= 0.3 keep 92% of it at 91.4% label accuracy (the rest: 88.0%).
    min_confidence: float = Field(0.5, ge=0, le=1)  # the current model's probability
    min_knn_agreement: float = Field(0.3, ge=0, le=1)  # the labeled examples' vote through the k-NN graph
    knn_k: int = Field(10, ge=1)
    min_consistency: float = Field(1.0, ge=0, le=1)  # share of perturbed views predicted the same
    perturbed_views: int = Field(1, ge=0, le=8)
    # Filters
    near_duplicate_similarity: float = Field(0.9, gt=0, le=1)  # character n-gram cosine
    contamination_similarity: float = Field(0.85, gt=0, le=1)  # to any held-out text
    min_chars: int = Field(3, ge=1)
    max_chars: int = Field(1000, ge=1)
    # A written sample whose characters surprise a 3-gram model of the labeled texts more than this many times
    # traffic's 99th percentile is dropped as unlike the workspace's texts (random characters: about 2x); 0: off.
    max_surprise_ratio: float = Field(1.5, ge=0)
    max_per_class: int = Field(200, ge=1)
    favoured_class_factor: float = Field(1.5, ge=1)  # cap multiplier for diagnosed weak classes
    # Share of kept samples per difficulty level (0 easy .. 3 hard), where generators can choose.
    difficulty_mix: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=4, max_length=4)] = [
        0.1, 0.3, 0.3, 0.3]
    # Whether each class's written samples are kept by its requested mix, level by level (false: the mix only
    # orders what is kept when a class cap binds, and a level's spare room goes to the best of the rest).
    difficulty_control: bool = True
    # Self-labeling by margin band: traffic is proposed per teacher class at the class's requested mix, by how sure
    # the model is of each text (false: all of it, the mix only ordering what a cap keeps; measured on Banking77,
    # holding traffic to the mix cost 0.1-0.5 points, so it is asked for, not on by default).
    self_label_by_level: bool = False
    # Diagnosed confused classes (both sides of a pair, weak classes, error clusters) are asked for harder samples.
    weak_class_difficulty_mix: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=4, max_length=4)] = [
        0.0, 0.2, 0.4, 0.4]
    # Generators are asked for what the diagnosis' actions ask ("generate 240 samples separating A from B"),
    # at most these many per confused pair / per class; without an ask, templates make templates_per_class.
    counterfactual_per_pair: int = Field(40, ge=0)
    templates_per_class: int = Field(30, ge=0)
    templates_max_per_class: int = Field(200, ge=0)
    templates_file: str = "templates.json"  # in the workspace: {"templates": {label: [...]}, "slots": {...}}
    # sql_migrations: look-alike migrations per confused pair (both sides), at most; per class each cycle, at least
    # (twice for a diagnosed class; an ask for more gets more).
    sql_migrations_per_pair: int = Field(60, ge=0)
    sql_migrations_per_class: int = Field(40, ge=0)
    # Execution verification (core/sandbox): when set, every candidate that passed the filters is executed and
    # kept only when its execution confirms its label; that verdict replaces the model's verifiers for it.
    # "" off; "local" a throwaway PostgreSQL cluster (needs its server binaries); "duckdb" the embedded fallback
    # (cannot see locks or rewrites: those samples are dropped as unverifiable); anything else a PostgreSQL DSN
    # (postgresql://... or key=value) of a server the sandbox may create databases and roles on.
    sandbox: str = ""
    # Another domain's check, by the same contract (core/sandbox/external.py): a command (argv, no shell) that
    # reads one sample as JSON on stdin and answers {"keep", "evidence", "reason"}, or a Python callable
    # "module:function". At most one of sandbox, sandbox_command and sandbox_callable.
    sandbox_command: list[Annotated[str, Field(min_length=1)]] = []
    sandbox_callable: str = ""
    sandbox_timeout_s: float = Field(30.0, gt=0, le=3600)  # per sample, for sandbox_command
    sandbox_workers: int = Field(2, ge=1, le=32)  # checks run in parallel
    # The human budget: each cycle asks a person to label this many pool texts, those where the views disagree
    # most (uncertainty x density); their answers count as seed from the next cycle. 0: ask nobody.
    ask_humans_per_cycle: int = Field(0, ge=0, le=10_000)
    # share of those asks that go first to the pool texts nearest the diagnosis' error clusters
    ask_near_clusters: float = Field(0.5, ge=0, le=1)
    llm: LLMConfig = LLMConfig()

    @field_validator("difficulty_mix", "weak_class_difficulty_mix")
    @classmethod
    def _some_weight(cls, mix: list[float]) -> list[float]:
        if not sum(mix) > 0:
            raise ValueError("at least one of the four weights must be above zero")
        return mix

    @field_validator("sandbox")
    @classmethod
    def _sandbox(cls, value: str) -> str:
        value = value.strip()
        if value in ("", "local", "duckdb") or value.startswith(("postgresql://", "postgres://")) or "=" in value:
            return value
        raise ValueError(f"'{value}' is not \"\", \"local\", \"duckdb\" or a PostgreSQL DSN")

    @field_validator("sandbox_callable")
    @classmethod
    def _callable(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value.strip()):
            raise ValueError(f"'{value}' is not module:function")
        return value.strip()

    @model_validator(mode="after")
    def _one_check(self):
        chosen = [name for name in ("sandbox", "sandbox_command", "sandbox_callable") if getattr(self, name)]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} are both set: one execution check at a time")
        return self

    @model_validator(mode="after")
    def _chars_range(self):
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars {self.min_chars} is above max_chars {self.max_chars}: nothing would be kept")
        return self


GatePolicy = Literal["human", "auto", "auto_under_thresholds"]


class GateConfig(_Section):
    policy: GatePolicy = "human"
    timeout_hours: float = Field(72.0, gt=0)
    # auto_under_thresholds, promotion and scaffold_adoption: automatic only when the gain is at least this.
    auto_min_gain: float = Field(0.01, ge=0, le=1)
    # auto_under_thresholds, data_review: automatic only for at most this many kept samples.
    auto_max_samples: int = Field(50_000, ge=0)
    # data_review checks: what can be wrong with a kept set. Estimated label noise: the share of kept
    # samples whose label the independent view (the labeled examples' kNN vote) does not rank first.
    max_label_noise: float = Field(0.35, ge=0, le=1)
    # Total-variation distance between the kept set's class mix and the labeled seed's.
    max_class_shift: float = Field(0.5, ge=0, le=1)
    # The share of the kept set written by one generator (generators that label real traffic excepted).
    max_generator_share: float = Field(0.8, ge=0, le=1)


class GatesConfig(_Section):
    # A negative margin would let the promotion checks pass a candidate worse than production.
    min_gain: float = Field(0.0, ge=0, le=1)
    # A gain whose one-sided lower bound at this confidence does not beat min_gain could be chance: it promotes
    # only where the probe's label-free gain (core/traffic.label_free_gain), a second reading, confirms it. 0.5:
    # the point estimate alone decides. On Banking77 (protocol split) 2 gate rows fixed and none broken (+0.65
    # points) promoted versions 0.2-0.7 points worse on the dev test, two cycles running, where the probe read
    # -0.25 and -0.03.
    promotion_confidence: float = Field(0.9, ge=0.5, lt=1)
    max_recall_drop: float = Field(0.10, ge=0, le=1)
    # The forgetting guard's significance: a class is forgotten only when its broken answers stand out at
    # this family-wise level across all the classes (Holm), and its recall also drops by max_recall_drop.
    forgetting_alpha: float = Field(0.05, gt=0, lt=0.5)
    # Labels from traffic where they decide (core/traffic.py): probe rows a cycle asks people to label,
    # where candidate and production disagree first; never trained on. 0 asks nobody.
    traffic_labels_per_cycle: int = Field(40, ge=0, le=10_000)
    # How long a cycle waits for those answers before its gate decides with the labels it has (0: no wait).
    traffic_labels_wait_hours: float = Field(24.0, ge=0)
    data_review: GateConfig = GateConfig(policy="auto_under_thresholds")
    promotion: GateConfig = GateConfig(policy="human")
    drift_review: GateConfig = GateConfig(policy="human")
    scaffold_adoption: GateConfig = GateConfig(policy="auto_under_thresholds")


class DriftConfig(_Section):
    """A candidate whose behaviour moves past any of these is sent to the drift_review gate."""
    max_flip_rate: float = Field(0.25, ge=0, le=1)
    max_kl: float = Field(0.5, ge=0)
    max_ece_increase: float = Field(0.05, ge=0, le=1)
    max_guardrail_drop: float = Field(0.0, ge=0, le=1)
    reference_size: int = Field(500, ge=0)  # recent traffic rows compared besides the held-out set
    max_flipped_shown: int = Field(50, ge=0)


class ScaffoldsConfig(_Section):
    """Inference scaffolds: how candidates are searched for and how an A/B test decides adoption."""
    test: Literal["mcnemar", "bootstrap"] = "mcnemar"  # the paired test that decides
    # 0.01, not 0.05: a search tries many variants, and a Banking77 run adopted a chance +3 points at 0.05.
    alpha: float = Field(0.01, gt=0, lt=0.5)  # significance: p below alpha, or a (1 - alpha) CI above zero
    bootstrap_iterations: int = Field(2000, ge=100)
    # Share of the held-out set the search scores on; the A/B test uses the rest, so the winner's luck in
    # the search does not count as evidence. 0: both use the whole held-out set (tiny data only).
    search_fraction: float = Field(0.5, ge=0, lt=1)
    budget: int = Field(12, ge=1)  # scaffolds a search evaluates when --budget is not given
    novelty_weight: float = Field(0.05, ge=0)  # search parent score = accuracy + weight * novelty
    novelty_k: int = Field(3, ge=1)  # novelty: mean distance to this many nearest scaffolds in the archive
    seed: int = Field(0, ge=0)
    # A prompt-template step may call this endpoint; off unless enabled (EVOLAB_LLM_* override as for curation).
    llm: LLMConfig = LLMConfig(max_requests=200)


class ServeConfig(_Section):
    """`python -m core serve`: request limits, log batching and how often production is looked up."""
    max_texts: int = Field(64, ge=1)  # per /predict request
    max_text_chars: int = Field(2000, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    flush_interval_s: float = Field(1.0, gt=0)  # production logs are written in batches, never per request
    flush_rows: int = Field(1000, ge=1)  # or sooner, once this many rows wait
    max_buffered_rows: int = Field(200_000, ge=1)  # predictions while the store is busy; the oldest dropped past it
    # Corrections are never dropped: past this many waiting, /feedback answers 503 until the store takes them.
    max_buffered_feedback: int = Field(10_000, ge=1)
    # How long a store call of the server waits for another process's lock before giving up (503 on a request).
    store_patience_s: float = Field(2.0, gt=0, le=60)
    retry_after_s: int = Field(5, ge=1, le=3600)  # the Retry-After of a 503: when the client should try again
    # A log batch the store refuses this many flushes in a row (not merely busy) is set aside in
    # <workspace>/serve-rejected/ so newer rows are logged again.
    max_flush_failures: int = Field(5, ge=1)
    poll_s: float = Field(0.5, gt=0)  # how often the production alias is read for a hot swap
    torch_threads: int = Field(0, ge=0)  # per request thread; 0: torch's default (OMP_NUM_THREADS or one per core)
    # /feedback always needs an API token (`python -m core tokens add`); /predict only when this is true.
    predict_requires_token: bool = False


def parse_window(text: str) -> tuple[int, int]:
    """'01:00-05:00' -> minutes after midnight of the start and end; the end may be past midnight."""
    try:
        start, end = (part.strip() for part in text.split("-"))
        minutes = []
        for part in (start, end):
            hours, mins = part.split(":")
            if not (0 <= int(hours) <= 24 and 0 <= int(mins) < 60) or int(hours) * 60 + int(mins) > 1440:
                raise ValueError
            minutes.append(int(hours) * 60 + int(mins))
    except ValueError:
        raise ValueError(f"training window '{text}' is not HH:MM-HH:MM") from None
    if minutes[0] == minutes[1]:
        raise ValueError(f"training window '{text}' is empty")
    return minutes[0], minutes[1]


class DaemonConfig(_Section):
    """`python -m core daemon`: cycles run only inside the training window (local time)."""
    window: str = "01:00-05:00"
    poll_s: float = Field(30.0, gt=0)
    cycles_per_night: int = Field(1, ge=1)
    # scaffold searches after the night's model cycles (each through the scaffold_adoption gate); 0: none
    scaffold_searches_per_night: int = Field(0, ge=0)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_window(value)
        return value


class EngineConfig(_Section):
    # A stage that raised (or whose process died) this many times in a row marks its cycle `failed`,
    # so one broken stage cannot block the workspace for good.
    max_stage_tries: int = Field(3, ge=1, le=100)
    # Where the cycle's embarrassingly parallel work runs (encoding the pool and the teacher view, the verifiers'
    # perturbed views, `predict` over a file): "local" in the engine's process, "ray" on a Ray cluster
    # (requirements-scale.txt). Workers return results; the engine alone writes the store.
    executor: Literal["local", "ray"] = "local"
    # Empty: start a Ray on this machine; "host:port" (a head's GCS) or "ray://host:port" (Ray Client): join it.
    ray_address: str = ""
    ray_workers: int = Field(0, ge=0, le=10_000)  # actors per kind of work; 0: one per CPU the cluster has

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"(ray://)?[A-Za-z0-9.\-]+:\d{1,5}", value):
            raise ValueError(f"'{value}' is not empty, host:port or ray://host:port")
        return value


class UIConfig(_Section):
    """The dashboard: a signed-in session idle this long asks for the password again before any action."""
    idle_timeout_minutes: float = Field(30.0, gt=0)


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    doctor: DoctorConfig = DoctorConfig()
    diagnose: DiagnoseConfig = DiagnoseConfig()
    curate: CurateConfig = CurateConfig()
    gates: GatesConfig = GatesConfig()
    drift: DriftConfig = DriftConfig()
    scaffolds: ScaffoldsConfig = ScaffoldsConfig()
    serve: ServeConfig = ServeConfig()
    daemon: DaemonConfig = DaemonConfig()
    engine: EngineConfig = EngineConfig()
    ui: UIConfig = UIConfig()


class ConfigError(ValueError):
    pass


# Keys earlier versions wrote that no longer mean anything: dropped on load, so old workspaces still open.
RETIRED = {("gates", "forgetting_min_examples"), ("gates", "*", "auto_min_confidence")}


def _drop_retired(raw: dict) -> dict:
    for path in RETIRED:
        nodes = [raw]
        for part in path[:-1]:
            nodes = [child for node in nodes for key, child in node.items()
                     if isinstance(child, dict) and part in ("*", key)]
        for node in nodes:
            node.pop(path[-1], None)
    return raw


def describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    return f"bad config value for '{key}': {first['msg'].removeprefix('Value error, ')}"


def parse_config(raw: dict) -> Config:
    try:
        return Config.model_validate(_drop_retired(raw))
    except ValidationError as err:
        raise ConfigError(describe(err)) from None


def load_config(path: Path) -> Config:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return parse_config(raw)


def dump_config(config: Config) -> str:
    return tomli_w.dumps(config.model_dump())
