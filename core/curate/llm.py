"""An LLM generator through any OpenAI-compatible chat-completions endpoint (off by default).

The base URL, model and key come from config or the environment (EVOLAB_LLM_BASE_URL,
EVOLAB_LLM_MODEL, and the variable named by curate.llm.api_key_env); the key is never stored.
"""
from __future__ import annotations

import os

import httpx

from core.curate.registry import Context, candidates, register

PROMPT = ("Write {n} different short customer messages whose intent is '{label}'{contrast}. Vary the wording, "
          "length and tone, and include the occasional typo. {levels} Examples of '{label}':\n{examples}\n"
          "Answer with one message per line and nothing else.")
LEVELS = ("clearly '{label}'", "mostly clear", "easy to mistake for another intent",
          "hard: nearly indistinguishable from {other}")


def describe_levels(counts: list[int], label: str, other: str | None) -> str:
    """The requested difficulty levels, in words the endpoint can follow."""
    rival = f"'{other}'" if other else "another intent"
    parts = [f"{n} {LEVELS[level].format(label=label, other=rival)}" for level, n in enumerate(counts) if n]
    return "Difficulty: " + "; ".join(parts) + "."


class LLMError(RuntimeError):
    pass


def endpoint(cfg) -> tuple[str, str, str | None] | None:
    """(base_url, model, key) of an enabled LLMConfig, the environment overriding; None when off."""
    base_url = os.environ.get("EVOLAB_LLM_BASE_URL", cfg.base_url)
    model = os.environ.get("EVOLAB_LLM_MODEL", cfg.model)
    if not cfg.enabled or not base_url or not model:
        return None
    return base_url, model, os.environ.get(cfg.api_key_env)


def complete(base_url: str, model: str, key: str | None, prompt: str, timeout: float,
             system: str = "You write realistic support tickets.", temperature: float = 0.9) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "temperature": temperature,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": prompt}]}
    try:
        response = httpx.post(base_url.rstrip("/") + "/chat/completions", json=body, headers=headers,
                              timeout=timeout)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
        raise LLMError(f"LLM endpoint {base_url}: {err}") from None


@register("llm")
def llm(ctx: Context):
    cfg = ctx.cfg.llm
    found = endpoint(cfg)
    if found is None:
        ctx.notes["llm"] = "disabled (curate.llm.enabled, base_url and model)"
        return candidates("llm", [])
    base_url, model, key = found
    targets = [(t, p) for t, p, _ in ctx.pairs] or [(label, None) for label in sorted(ctx.favoured)]
    rows, requests, failed = [], 0, False
    for label, other in targets:
        target = f"pair:{label}->{other}" if other else f"class:{label}"
        wanted = ctx.asks.get(target, cfg.per_request)  # the diagnosis' ask, else one request's worth
        made = 0
        examples = "\n".join(f"- {t}" for t in ctx.seed.loc[ctx.seed["label"] == label, "text"].head(5))
        contrast = f" (not '{other}', which it is often confused with)" if other else ""
        while made < wanted and requests < cfg.max_requests and not failed:
            n = min(cfg.per_request, wanted - made)
            levels = describe_levels(ctx.level_counts(label, n), label, other)
            try:
                text = complete(base_url, model, key, PROMPT.format(
                    n=n, label=label, contrast=contrast, levels=levels, examples=examples), cfg.timeout_s)
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
            rows += [{"parent_id": None, "text": line, "label": label, "target": target} for line in lines]
            if target not in ctx.asks:
                break  # no count asked: one request per target
    ctx.notes.setdefault("llm", f"{requests} requests")
    return candidates("llm", rows)
