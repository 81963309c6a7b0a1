"""An LLM generator through any OpenAI-compatible chat-completions endpoint (off by default).

It speaks the protocol vLLM, Ollama, llama.cpp's server and hosted APIs share: `POST {base_url}/chat/completions`
with model, messages, temperature, max_tokens and seed, reading choices[0].message.content. The base URL, model
and key come from config or the environment (EVOLAB_LLM_BASE_URL, EVOLAB_LLM_MODEL, and the variable named by
curate.llm.api_key_env); the key is never stored.

The prompt is the workspace's own: its label names, a few of its seed texts per label, and `domain` when config
describes the texts. A seed text that is also a held-out or traffic-probe text is never shown: an endpoint that
saw one could hand it back, and a sample that copies one trains on what grades the model.
"""
from __future__ import annotations

import os
import random

import httpx
import pandas as pd

from core.curate.filters import normalize
from core.curate.registry import Context, candidates, register

SYSTEM = "You write new examples of {domain}. Answer with the texts asked for and nothing else."
PROMPT = ("Write {n} different new texts labeled '{label}'{contrast}. Make them the same kind of text as the "
          "examples, and vary the wording and length. {levels}\nExamples labeled '{label}':\n{examples}\n"
          "{rival}Answer with one text per line and nothing else.")
LEVELS = ("clearly '{label}'", "mostly clear", "easy to mistake for another label",
          "hard: nearly indistinguishable from {other}")
SHOWN_LABELS = 40  # label names a default domain lists; more are counted, not named
EXAMPLE_CHARS = 300  # a longer example is cut: the prompt shows what the texts are like, not every word


def describe_levels(counts: list[int], label: str, other: str | None) -> str:
    """The requested difficulty levels, in words the endpoint can follow."""
    rival = f"'{other}'" if other else "another label"
    parts = [f"{n} {LEVELS[level].format(label=label, other=rival)}" for level, n in enumerate(counts) if n]
    return "Difficulty: " + "; ".join(parts) + "."


def domain_of(cfg, labels: list[str]) -> str:
    """What the texts are: config's `domain`, else only what the data says, its label names."""
    if cfg.domain.strip():
        return cfg.domain.strip()
    named = ", ".join(labels[:SHOWN_LABELS]) + (f" and {len(labels) - SHOWN_LABELS} more"
                                                 if len(labels) > SHOWN_LABELS else "")
    return f"texts, each labeled with one of: {named}"


def examples_of(seed: pd.DataFrame, label: str, k: int, protected: frozenset[str], seed_value: int) -> list[str]:
    """Up to k of the label's seed texts for a prompt, drawn by seed_value, each on one line and cut short;
    never one whose normalized text is protected (held out or in the traffic probe)."""
    texts = [t for t in seed.loc[seed["label"] == label, "text"].astype(str) if normalize(t) not in protected]
    chosen = random.Random(f"{seed_value}:{label}").sample(texts, min(k, len(texts)))
    lines = [" ".join(t.split()) for t in chosen]
    return [line if len(line) <= EXAMPLE_CHARS else line[:EXAMPLE_CHARS].rsplit(" ", 1)[0] + " ..." for line in lines]


def prompt_for(ctx: Context, label: str, other: str | None, n: int) -> str:
    """The user message asking for n texts of label (distinct from other, when a confusion is the target)."""
    k = ctx.cfg.llm.examples_per_label

    def shown(name: str) -> str:
        lines = examples_of(ctx.seed, name, k, ctx.protected, ctx.seed_value)
        return "\n".join(f"- {line}" for line in lines) or "(none)"

    contrast = f" (not '{other}', which it is often confused with)" if other else ""
    rival = f"Examples labeled '{other}', which these must not be:\n{shown(other)}\n" if other else ""
    return PROMPT.format(n=n, label=label, contrast=contrast, levels=describe_levels(ctx.level_counts(label, n),
                                                                                      label, other),
                         examples=shown(label), rival=rival)


class LLMError(RuntimeError):
    pass


def endpoint(cfg) -> tuple[str, str, str | None] | None:
    """(base_url, model, key) of an enabled LLMConfig, the environment overriding; None when off."""
    base_url = os.environ.get("EVOLAB_LLM_BASE_URL", cfg.base_url)
    model = os.environ.get("EVOLAB_LLM_MODEL", cfg.model)
    if not cfg.enabled or not base_url or not model:
        return None
    return base_url, model, os.environ.get(cfg.api_key_env)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _refusal(response: httpx.Response) -> str:
    """An error answer in one line: the status and the endpoint's own message (OpenAI's {"error": {"message"}})."""
    try:
        error = response.json().get("error")
        said = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        said = None
    return f"HTTP {response.status_code} {response.reason_phrase}" + (f": {said}" if said else
                                                                      f": {response.text}" if response.text else "")


def complete(base_url: str, model: str, key: str | None, prompt: str, timeout: float,
             system: str, temperature: float = 0.9, max_tokens: int | None = None,
             seed: int | None = None) -> str:
    """The first choice's answer to one chat-completions request; LLMError with one line on any failure."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "temperature": temperature,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": prompt}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if seed is not None:
        body["seed"] = seed
    url = base_url.rstrip("/") + "/chat/completions"
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise LLMError(f"LLM endpoint {url}: no answer within {timeout:g}s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        raise LLMError(f"LLM endpoint {url}: {_one_line(f'{type(err).__name__}: {err}')}") from None
    if response.is_error:
        raise LLMError(f"LLM endpoint {url}: {_one_line(_refusal(response))}")
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError, ValueError):
        content = None
    if not isinstance(content, str):
        raise LLMError(f"LLM endpoint {url}: the answer is not a chat completion ({_one_line(response.text, 120)})")
    return content


@register("llm")
def llm(ctx: Context):
    cfg = ctx.cfg.llm
    found = endpoint(cfg)
    if found is None:
        ctx.notes["llm"] = "disabled (curate.llm.enabled, base_url and model)"
        return candidates("llm", [])
    base_url, model, key = found
    targets = [(t, p) for t, p, _ in ctx.pairs] or [(label, None) for label in sorted(ctx.favoured)]
    system = SYSTEM.format(domain=domain_of(cfg, list(ctx.loaded.labels)))
    rows, requests, failed = [], 0, False
    for label, other in targets:
        target = f"pair:{label}->{other}" if other else f"class:{label}"
        wanted = ctx.asks.get(target, cfg.per_request)  # the diagnosis' ask, else one request's worth
        made = 0
        while made < wanted and requests < cfg.max_requests and not failed:
            n = min(cfg.per_request, wanted - made)
            try:
                text = complete(base_url, model, key, prompt_for(ctx, label, other, n), cfg.timeout_s, system,
                                max_tokens=cfg.max_tokens, seed=ctx.seed_value * 1000 + requests)
            except LLMError as err:
                ctx.notes["llm"] = str(err)  # a failing endpoint costs this generator, not the cycle
                failed = True
                break
            requests += 1
            lines = [line.strip().lstrip("-*0123456789.) ").strip() for line in text.splitlines()]
            lines = [line for line in lines if line][:n]
            if not lines:
                break  # an endpoint that answers nothing usable is not asked again for this target
            made += len(lines)
            written = [{"parent_id": None, "text": line, "label": label, "target": target} for line in lines]
            # The prompt asked for each level's share of n; every line is stored (the endpoint's work, with its
            # reason if dropped), counted at the level it measures, and the class's mix decides what is kept.
            rows += ctx.at_levels("llm", written, label, n, select=False) if ctx.cfg.difficulty_control else written
            if target not in ctx.asks:
                break  # no count asked: one request per target
    ctx.notes.setdefault("llm", f"{requests} requests")
    return candidates("llm", rows)
