"""The LLM generator and the scaffolds' llm step against a real local OpenAI-compatible server (tests/llm_server.py:
a random-weight GPT-2 generating through transformers, over a real socket). Their prompts are the workspace's
own, labels and seed texts, in no one domain's words; they never carry a held-out or traffic-probe text; and the
verifiers drop the nonsense the model writes, each drop with its reason stored."""
import random
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from core import curate as C, cycle, registry
from core.config import CurateConfig
from core.curate import filters, llm
from core.curate.registry import Context
from core.diagnose.errors import class_findings, pair_findings, rank
from core.scaffolds import spec as S
from core.scaffolds.run import bank_for, llm_asker, prompt_examples, run as run_scaffold
from tests.conftest import ROOT, fast_config, make_workspace
from tests.llm_server import CHARS, MODEL, build_model, decode, serve

KEY = "sk-local-test"
# Words one domain's prompt would use; the workspace's own data, not the code, decides what a prompt says.
DOMAIN_WORDS = ("customer", "intent", "ticket", "support", "team")


@pytest.fixture(scope="module")
def server():
    with serve(api_key=KEY) as running:
        yield running


def _endpoint(server, monkeypatch, **extra) -> dict:
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    return {"enabled": True, "base_url": server.base_url, "model": MODEL, "api_key_env": "TEST_LLM_KEY",
            "max_tokens": 160, **extra}


def _sent(server, since: int) -> list[dict]:
    """The chat-completions bodies the server received since request number `since`."""
    return [body for path, _, body in server.requests[since:] if path == "/v1/chat/completions"]


def _evaluation_texts(store) -> list[str]:
    return filters.protected(store.examples("heldout"), store.traffic_probe())["text"].map(filters.normalize).tolist()


def _is_one_of(line: str, texts) -> bool:
    """A prompt's example line is one of texts, whitespace joined and a long one cut (ending " ...")."""
    line = filters.normalize(line).removesuffix(" ...")
    return any(filters.normalize(t).startswith(line) for t in texts)


def _own_words(prompt: str) -> str:
    """A prompt without its example lines ("- text", "- [label] text"): the words the code chose."""
    return "\n".join(line for line in prompt.splitlines() if not line.startswith("- ")).lower()


def _example_lines(prompt: str, label: str) -> list[str]:
    """The "- text" lines under "Examples labeled 'label'" in a generator prompt."""
    block = prompt.split(f"Examples labeled '{label}'", 1)[1].split("\n", 1)[1]
    lines = []
    for line in block.split("\n"):
        if not line.startswith("- "):
            break
        lines.append(line[2:])
    return lines


def test_llm_generator_writes_from_the_workspace_and_its_nonsense_is_dropped(baseline_ws, server, monkeypatch):
    """A whole curate stage against the server: a stored diagnosis asks for samples separating two classes; the
    requests carry the workspace's label names and its own seed texts, no evaluation text; every sample the
    random model wrote is dropped with its reason stored."""
    ws, store = baseline_ws, baseline_ws.store
    labels = store.labels()
    config = ws.config()
    config.curate.generators = ["llm"]
    config.curate.llm = config.curate.llm.model_copy(update=_endpoint(server, monkeypatch, per_request=5,
                                                                      max_requests=4))
    ws.save_config(config)
    # The diagnosis: two shipping_delay texts predicted as account_access.
    results = pd.DataFrame({"example_id": [1, 2, 3], "text": ["a", "b", "c"],
                            "label": ["shipping_delay", "shipping_delay", "billing_question"],
                            "predicted": ["account_access", "account_access", "billing_question"]})
    results["correct"] = results["label"] == results["predicted"]
    pairs = pair_findings(results, samples_per_error=5)
    findings = rank(pairs + class_findings(results, pairs=pairs, samples_per_error=5), set())
    cycle_id = store.create_cycle("evolve", "curate", "v1", "test")
    store.save_diagnosis(cycle_id, findings, None)
    since = len(server.requests)
    cycle.stage_curate(ws, store.cycle(cycle_id), {"progress": False}, cycle.FLOWS["evolve"]["curate"])

    sent = _sent(server, since)
    # the pair's ask of 10, at most five texts a request, until answered or four requests are spent
    assert 2 <= len(sent) <= 4
    assert all(h == f"Bearer {KEY}" for _, h, _ in server.requests[since:])
    seed = store.seed_examples()
    seed_of = {label: seed.loc[seed["label"] == label, "text"].tolist() for label in labels}
    evaluation = _evaluation_texts(store)
    for body in sent:
        assert body["model"] == MODEL and body["max_tokens"] == 160 and isinstance(body["seed"], int)
        system, user = (m["content"] for m in body["messages"])
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert all(name in system for name in labels)  # the default domain: the workspace's label names
        assert re.search(r"Write [1-5] different new texts labeled 'shipping_delay' \(not 'account_access'", user)
        for label in ("shipping_delay", "account_access"):  # its own seed texts, three of each
            shown = _example_lines(user, label)
            assert len(shown) == 3 and all(_is_one_of(line, seed_of[label]) for line in shown), (label, shown)
        text = filters.normalize(system + "\n" + user)
        assert not [t for t in evaluation if t in text], "a held-out or probe text reached the endpoint"
        assert not [w for w in DOMAIN_WORDS if w in _own_words(system + "\n" + user)]

    samples = store.samples(cycle_id)
    assert len(samples) > 0 and set(samples["generator"]) == {"llm"}
    assert (samples["status"] == "dropped").all(), samples[samples["status"] != "dropped"][["text", "reason"]]
    assert samples["reason"].str.len().gt(0).all()
    assert store.cycle(cycle_id)["stage"] == cycle.FLOWS["evolve"]["curate"].next


def test_a_seed_text_that_is_also_held_out_or_in_the_probe_never_reaches_the_endpoint(baseline_ws, server,
                                                                                       monkeypatch):
    """Data that repeats a held-out or probe text in its seed: the prompt shows the class's other seed texts."""
    store = baseline_ws.store
    held = store.examples("heldout").query("label == 'account_access'")["text"].iloc[0]
    probe = store.traffic_probe()["text"].iloc[0]
    seed = store.seed_examples()[["id", "text", "label"]]
    planted = pd.DataFrame({"id": [-1, -2], "text": [held, probe], "label": ["account_access"] * 2})
    cfg = baseline_ws.config().curate.model_copy(update={
        "generators": ["llm"], "llm": CurateConfig().llm.model_copy(update=_endpoint(
            server, monkeypatch, per_request=3, max_requests=1, examples_per_label=20))})
    ctx = Context(loaded=registry.load_alias(baseline_ws), seed=pd.concat([planted, seed], ignore_index=True),
                  pool=store.unlabeled_pool(), pairs=[], favoured={"account_access"}, cfg=cfg, root=baseline_ws.root)
    since = len(server.requests)
    samples, _ = C.curate(ctx, filters.protected(store.examples("heldout"), store.traffic_probe()), pd.DataFrame())
    [body] = _sent(server, since)
    user = body["messages"][-1]["content"]
    assert held not in user and probe not in user
    shown = _example_lines(user, "account_access")
    # every other seed text of the class, at up to 20 a label (a long one cut, ending " ...")
    others = seed.loc[seed["label"] == "account_access", "text"]
    assert len(shown) == len(others) and all(_is_one_of(line, others) for line in shown)
    assert len(samples) and (samples["status"] == "dropped").all()


def test_the_store_names_seed_texts_that_evaluate_and_scaffold_prompts_leave_them_out(tmp_path, tiny_csvs):
    """Data whose seed repeats a held-out text: the store says which of some texts are held-out or probe texts
    (case and spacing aside) without returning any evaluation row, and the scaffolds' prompt examples skip it."""
    labeled, held = pd.read_csv(tiny_csvs["labeled"]), pd.read_csv(tiny_csvs["heldout"])
    repeated = held.query("label == 'billing_question'")["text"].iloc[0]
    paths = {**tiny_csvs, "labeled": tmp_path / "labeled.csv"}
    pd.concat([pd.DataFrame({"text": [repeated], "label": ["billing_question"]}), labeled]).to_csv(
        paths["labeled"], index=False)
    config = fast_config()
    config.scaffolds.llm.examples_per_label = 20  # every seed text a prompt may show
    ws = make_workspace(tmp_path / "ws", paths, config)
    probe = ws.store.traffic_probe()["text"].iloc[0]
    seed = ws.store.seed_examples()
    assert repeated in set(seed["text"])
    asked = ["  " + repeated.upper().replace(" ", "   ") + " ", probe, seed["text"].iloc[-1], "never seen"]
    assert ws.store.evaluation_texts_in(asked) == set(asked[:2])
    examples = prompt_examples(ws, seed, ws.store.labels())
    others = seed.loc[(seed["label"] == "billing_question") & (seed["text"] != repeated), "text"]
    assert len(examples["billing_question"]) == len(others) == 6
    assert all(_is_one_of(line, others) for line in examples["billing_question"])
    assert not any(_is_one_of(line, [repeated]) for lines in examples.values() for line in lines)


def test_the_prompts_of_another_domain_carry_its_words_and_no_customer_wording(server, monkeypatch, tmp_path):
    """Labels and seed texts of a made-up domain (reviews of books by genre): the prompt names those labels and
    shows those texts, says what config says the texts are, and nothing of support tickets."""
    labels = ["mystery", "romance", "science_fiction"]
    seed = pd.DataFrame({"id": range(6), "label": [label for label in labels for _ in range(2)], "text": [
        "The detective found the letter in the library at midnight.", "Who poisoned the gardener? Not the cook.",
        "They met again at the harbour after ten years apart.", "Her heart raced when he read the poem aloud.",
        "The colony ship woke its crew three centuries early.", "Androids on Europa began to dream in Latin."]})
    for domain in ("", "one-line summaries of novels"):
        cfg = CurateConfig().model_copy(update={
            "generators": ["llm"], "difficulty_control": False,  # no model here to measure the lines' levels
            "llm": CurateConfig().llm.model_copy(update=_endpoint(
                server, monkeypatch, per_request=4, max_requests=2, domain=domain))})
        ctx = Context(loaded=SimpleNamespace(labels=labels), seed=seed, pool=seed.iloc[:0], cfg=cfg, root=tmp_path,
                      pairs=[("romance", "mystery", 2)], favoured={"romance"})
        since = len(server.requests)
        rows = C.GENERATORS["llm"](ctx)
        [body] = _sent(server, since)
        system, user = (m["content"] for m in body["messages"])
        assert (domain or "texts, each labeled with one of: mystery, romance, science_fiction") in system
        assert "labeled 'romance' (not 'mystery'" in user
        assert set(_example_lines(user, "romance")) == set(seed["text"][2:4])
        assert set(_example_lines(user, "mystery")) == set(seed["text"][:2])
        assert not [w for w in DOMAIN_WORDS if w in (system + user).lower()]
        assert len(rows) and set(rows["label"]) == {"romance"}  # the model's nonsense, for the verifiers


def test_a_scaffold_llm_step_asks_with_the_workspace_labels_and_examples(baseline_ws, server, monkeypatch):
    """The scaffolds' llm step over the same server: no domain's words, the candidates' seed texts as examples,
    no evaluation text, and an answer that names no label leaves the model's scores as they were."""
    ws, store = baseline_ws, baseline_ws.store
    config = ws.config()
    config.scaffolds.llm = config.scaffolds.llm.model_copy(update=_endpoint(server, monkeypatch, max_tokens=24))
    ws.save_config(config)
    loaded = registry.load(ws, "v1")
    bank = bank_for(ws, loaded)
    texts = ["where is my parcel", "refund my double charge"]
    since = len(server.requests)
    out = run_scaffold(S.parse({"steps": [{"type": "classify"}, {"type": "llm"}]}), loaded, texts, bank,
                        llm_asker(config.scaffolds.llm))
    plain = run_scaffold(S.parse({"steps": [{"type": "classify"}]}), loaded, texts, bank)
    sent = _sent(server, since)
    assert len(sent) == 2 and [r["label"] for r in out] == [r["label"] for r in plain]
    seed = set(store.seed_examples()["text"])
    evaluation = _evaluation_texts(store)
    for body, text in zip(sent, texts):
        system, user = (m["content"] for m in body["messages"])
        assert body["temperature"] == 0.0 and f"Text: {text}\n" in user
        assert all(name in user for name in loaded.labels)
        shown = [line.split("] ", 1)[1] for line in user.splitlines() if line.startswith("- [")]
        # three seed texts for each of the three candidates
        assert len(shown) == 9 and all(_is_one_of(line, seed) for line in shown)
        assert not [t for t in evaluation if t in filters.normalize(user)]
        assert not [w for w in DOMAIN_WORDS if w in _own_words(system + "\n" + user)]


@pytest.mark.parametrize("data", ["tickets_labeled.csv", "sql_migrations_seed.csv"])
def test_text_unlike_the_workspace_is_dropped_in_any_domain(data):
    """A third of a dataset's texts as the labeled ones, a third as traffic: the last third, real texts of the same
    kind, pass; the local model's nonsense and random characters do not, whether the texts are tickets or SQL."""
    texts = pd.read_csv(ROOT / "data" / data)["text"].tolist()
    labeled, traffic, new = texts[0::3], texts[1::3], texts[2::3]
    rng = random.Random(0)
    noise = ["".join(rng.choice(CHARS.strip()) for _ in range(rng.randint(10, 80))) for _ in range(20)]
    torch.manual_seed(0)
    written = build_model().generate(torch.tensor([[2] * 4]), do_sample=True, max_new_tokens=60, top_k=0,
                                     num_return_sequences=20, pad_token_id=0)
    noise += [line for row in written[:, 4:].tolist() for line in decode(row).split("\n") if len(line) >= 3]
    assert filters.unlike_reasons(new, labeled, traffic, 1.5) == [None] * len(new)
    dropped = filters.unlike_reasons(noise, labeled, traffic, 1.5)
    assert all(r and r.startswith("unlike the workspace's texts") for r in dropped), list(zip(noise, dropped))
    assert filters.unlike_reasons(noise, labeled, traffic[:filters.MIN_TRAFFIC - 1], 1.5) == [None] * len(noise)


def test_endpoint_failures_are_one_line(server, monkeypatch):
    """A wrong model name, a wrong key and a closed port each end the request with one line naming the endpoint."""
    with pytest.raises(llm.LLMError) as wrong_model:
        llm.complete(server.base_url, "no-such-model", KEY, "hi", 10, "system")
    with pytest.raises(llm.LLMError) as wrong_key:
        llm.complete(server.base_url, MODEL, "sk-wrong", "hi", 10, "system")
    with pytest.raises(llm.LLMError) as closed:
        llm.complete("http://127.0.0.1:9/v1", MODEL, None, "hi", 2, "system")
    assert "HTTP 404" in str(wrong_model.value) and "`no-such-model` does not exist" in str(wrong_model.value)
    assert "HTTP 401" in str(wrong_key.value) and "Incorrect API key" in str(wrong_key.value)
    assert "127.0.0.1:9/v1/chat/completions" in str(closed.value)
    for err in (wrong_model, wrong_key, closed):
        assert "\n" not in str(err.value)


def test_the_local_server_samples_with_the_requested_settings(server):
    """The server is a model, not a script: the same seed repeats an answer, another seed changes it, n gives n
    choices, max_tokens bounds them, and temperature 0 is greedy."""
    import httpx

    def ask(**params):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "write something"}], **params}
        reply = httpx.post(server.base_url + "/chat/completions", json=body, timeout=60,
                           headers={"Authorization": f"Bearer {KEY}"})
        reply.raise_for_status()
        return [c["message"]["content"] for c in reply.json()["choices"]]

    first = ask(n=3, max_tokens=20, temperature=1.0, seed=7)
    assert len(first) == 3 and all(len(c) <= 20 for c in first)
    assert ask(n=3, max_tokens=20, temperature=1.0, seed=7) == first
    assert ask(n=3, max_tokens=20, temperature=1.0, seed=8) != first
    greedy = ask(n=2, max_tokens=20, temperature=0)
    assert greedy[0] == greedy[1] == ask(max_tokens=20, temperature=0, seed=99)[0]
    models = httpx.get(server.base_url + "/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
