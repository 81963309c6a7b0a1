"""A real OpenAI-compatible chat-completions server for the tests: a tiny GPT-2 with random weights, built offline.

Nothing is canned. Each request's messages are laid out as one prompt, encoded by a character tokenizer,
run through `model.generate` with the request's max_tokens, n, temperature and seed, and the sampled
characters come back as the answers, the way vLLM, Ollama or llama.cpp's server answer. The model has never
seen a text, so what it writes is nonsense; what a client does with nonsense is what the tests check.

In a test: `with serve() as server:` then `server.base_url` and `server.requests` (path, Authorization, body).
On its own: `python -m tests.llm_server --port 8000`, then base_url http://127.0.0.1:8000/v1.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import GPT2Config, GPT2LMHeadModel

MODEL = "tiny-random-gpt2"
EOS, UNK = 0, 1
# Lowercase text with its spaces, punctuation and line breaks: enough for nonsense that looks like lines of text.
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,;:'?!-_()\n"
VOCAB = ["<eos>", "<unk>", *CHARS]
IDS = {ch: i for i, ch in enumerate(VOCAB)}
CONTEXT = 2048  # positions; a longer prompt keeps its end, as a server shifting its context would
DEFAULT_MAX_TOKENS = 64


def encode(text: str) -> list[int]:
    return [IDS.get(ch, UNK) for ch in text.lower()]


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids if i > UNK)


def build_model(seed: int = 0) -> GPT2LMHeadModel:
    """One layer, two heads, 32 dimensions, random weights from `seed`: no download, built in milliseconds."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(VOCAB), n_positions=CONTEXT, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
    return GPT2LMHeadModel(config).eval()


def chat_prompt(messages: list[dict]) -> str:
    """The messages as one prompt, role by role, ending where the assistant's answer begins."""
    return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"


class BadRequest(ValueError):
    pass


def generate(model: GPT2LMHeadModel, lock: threading.Lock, body: dict) -> tuple[list[tuple[str, str]], int]:
    """([(answer, finish_reason)] one per choice, prompt tokens) for a chat-completions request body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages):
        raise BadRequest("'messages' must be a non-empty list of {role, content}")
    try:
        max_tokens = int(body.get("max_tokens") or DEFAULT_MAX_TOKENS)
        n = int(body.get("n") or 1)
        temperature = float(body.get("temperature", 1.0))
        seed = int(body["seed"]) if body.get("seed") is not None else secrets.randbelow(2**31)  # as a server does
    except (TypeError, ValueError) as err:
        raise BadRequest(f"bad sampling parameter ({err})") from None
    if not 1 <= max_tokens < CONTEXT or not 1 <= n <= 16 or temperature < 0:
        raise BadRequest(f"max_tokens must be 1..{CONTEXT - 1}, n 1..16 and temperature >= 0")
    ids = encode(chat_prompt(messages))
    prompt = torch.tensor([ids[-(CONTEXT - max_tokens):]])
    sample = temperature > 0
    with lock, torch.no_grad():
        torch.manual_seed(seed)  # the same seed and request give the same answers
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_tokens,
                             do_sample=sample, temperature=temperature if sample else None, top_k=0,
                             top_p=1.0, num_return_sequences=n if sample else 1, pad_token_id=EOS,
                             eos_token_id=EOS)
    rows = out[:, prompt.shape[1]:].tolist()
    rows = rows if sample else rows * n  # greedy decoding has one answer
    choices = []
    for row in rows:
        stopped = EOS in row
        choices.append((decode(row[:row.index(EOS)] if stopped else row), "stop" if stopped else "length"))
    return choices, prompt.shape[1]


class Handler(BaseHTTPRequestHandler):
    server: "Server"

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def _authorized(self) -> bool:
        if self.server.api_key and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            self._error(401, "Incorrect API key provided.", "authentication_error")
            return False
        return True

    def do_GET(self):
        if self.path.rstrip("/") != "/v1/models":
            return self._error(404, f"no route {self.path}")
        if self._authorized():
            self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]})

    def do_POST(self):
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        except ValueError:
            return self._error(400, "the body is not JSON")
        self.server.requests.append((self.path, self.headers.get("Authorization"), body))
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        if not self._authorized():
            return
        if not isinstance(body, dict) or body.get("model") != MODEL:
            return self._error(404, f"The model `{body.get('model') if isinstance(body, dict) else None}` "
                                    "does not exist.", "NotFoundError")
        try:
            choices, prompt_tokens = generate(self.server.model, self.server.lock, body)
        except BadRequest as err:
            return self._error(400, str(err))
        completion = sum(len(text) for text, _ in choices)
        self._send(200, {
            "id": f"chatcmpl-{len(self.server.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": MODEL,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                        for i, (text, finish) in enumerate(choices)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion}})

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, api_key: str | None = None, weights_seed: int = 0):
        super().__init__(("127.0.0.1", port), Handler)
        self.model, self.lock, self.api_key = build_model(weights_seed), threading.Lock(), api_key
        self.requests: list[tuple[str, str | None, object]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"


@contextlib.contextmanager
def serve(api_key: str | None = None, weights_seed: int = 0):
    """The server on a free port in a background thread, shut down and closed on exit."""
    server = Server(0, api_key, weights_seed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    server = Server(args.port, args.api_key)
    print(f"serving {MODEL} at {server.base_url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
