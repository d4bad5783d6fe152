"""The HTTP server on 127.0.0.1 (loopback only): OpenAI client, streaming, 16 concurrent clients, disconnects,
bad requests, metrics, the CLI's loader and the chat template of a tokenized (7B-family) checkpoint."""
import argparse
import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import flashxlstm  # noqa: E402
from flashxlstm.generation import generate  # noqa: E402
from flashxlstm.serving import ByteTokenizer, Engine, EngineConfig, ServingTokenizer  # noqa: E402
from flashxlstm.serving.app import create_app  # noqa: E402


@contextlib.contextmanager
def serve(engine: Engine, name: str):
    """Run the app on a free loopback port in a thread; yields the base URL."""
    engine.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine, name), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.stop()
        sock.close()


def byte_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = flashxlstm.xLSTMLMConfig(vocab_size=256, embedding_dim=32, num_blocks=2, slstm_at="xLSTM[1:1]",
                                   mlstm_num_heads=2, slstm_num_heads=2)
    return flashxlstm.xLSTMLM(cfg).eval()


@pytest.fixture(scope="module")
def server():
    model = byte_model()
    engine = Engine(model, ServingTokenizer(ByteTokenizer()),
                    EngineConfig(max_batch=8, prefill_tokens=16, max_prompt_tokens=100, max_tokens_limit=5000))
    with serve(engine, "tiny") as url:
        yield url, engine, model


def single(model, prompt_ids, n) -> list[int]:
    return generate(model, torch.tensor([prompt_ids]), n)[0, len(prompt_ids):].tolist()


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_openai_client_completions_and_stream(server):
    openai = pytest.importorskip("openai")
    url, engine, model = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    full = client.completions.create(model="tiny", prompt="The cat", max_tokens=12, temperature=0)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 12
    assert full.usage.prompt_tokens == len(b"The cat")
    assert full.choices[0].text == ByteTokenizer().decode(single(model, list(b"The cat"), 12))
    chunks = list(client.completions.create(model="tiny", prompt="The cat", max_tokens=12, temperature=0, stream=True))
    assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                          temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 6
    prompt = list(ServingTokenizer(ByteTokenizer()).chat_prompt([{"role": "user", "content": "hi"}]).encode())
    assert chat.choices[0].message.content == ByteTokenizer().decode(single(model, prompt, 6))
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content


def test_sixteen_concurrent_clients_each_equal_generate(server):
    url, engine, model = server
    gen = torch.Generator().manual_seed(16)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in
               (1, 90, 4, 33, 17, 60, 2, 45, 8, 71, 25, 12, 99, 6, 38, 19)]
    max_tokens = [5 + (7 * i) % 20 for i in range(16)]

    def client(i):
        body = {"model": "tiny", "prompt": prompts[i], "max_tokens": max_tokens[i], "temperature": 0,
                "return_token_ids": True, "stream": i % 2 == 0}
        with httpx.Client(base_url=url, timeout=60) as c:
            if not body["stream"]:
                r = c.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text
                return r.json()["choices"][0]["token_ids"]
            with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                events = sse_events(r)
            assert events[-1] == "[DONE]"
            return [t for e in events[:-1] for t in e["choices"][0]["token_ids"]]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client, range(16)))
    for prompt, n, got in zip(prompts, max_tokens, results):
        assert got == single(model, prompt, n)
    assert engine.stats.occupancy_sum / engine.stats.decode_steps > 1  # requests really shared decode steps


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_client_disconnect_mid_stream_frees_its_slot(server):
    url, engine, model = server
    wait_for(lambda: engine.num_running == 0)
    aborted = engine.stats.finished.get("abort", 0)
    with httpx.Client(base_url=url, timeout=30) as c:
        body = {"model": "tiny", "prompt": "abc", "max_tokens": 5000, "temperature": 0, "stream": True,
                "ignore_eos": True}
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            got = [line for _, line in zip(range(6), lines)]
            assert any(line.startswith("data: ") for line in got)
            assert engine.num_running == 1
        # the response is closed here, long before 5000 tokens
    wait_for(lambda: engine.num_running == 0)
    assert engine.stats.finished.get("abort", 0) == aborted + 1
    body["stream"] = False  # a client that gives up waiting for a whole completion
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    wait_for(lambda: engine.stats.finished.get("abort", 0) == aborted + 2)
    assert engine.num_running == 0
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "abc", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


BAD = [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, None),
    ({"prompt": "x"}, 400, None),
    ({"model": "gpt-4", "prompt": "x"}, 404, "model_not_found"),
    ({"model": "tiny", "prompt": "x" * 101}, 400, "context_length_exceeded"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 5001}, 400, None),
    ({"model": "tiny", "prompt": "x", "max_tokens": "many"}, 400, None),
    ({"model": "tiny", "prompt": "x", "temperature": -0.5}, 400, None),
    ({"model": "tiny", "prompt": "x", "top_p": 1.5}, 400, None),
    ({"model": "tiny", "prompt": "x", "n": 3}, 400, None),
    ({"model": "tiny", "prompt": [1, 999]}, 400, None),
    ({"model": "tiny", "prompt": ""}, 400, None),
    ({"model": "tiny", "prompt": {"a": 1}}, 400, None),
    ({"model": "tiny", "prompt": "x", "stream": "yes"}, 400, None),
]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    url, engine, model = server
    with httpx.Client(base_url=url, timeout=30) as c:
        for body, status, code in BAD:
            r = c.post("/v1/completions", **({"content": body} if isinstance(body, bytes) else {"json": body}))
            assert r.status_code == status, (body, r.text)
            err = r.json()["error"]
            assert err["message"] and err["type"] and (code is None or err["code"] == code), err
        for messages in (None, [], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}]):
            r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": messages})
            assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        assert c.get("/v1/nothing").status_code == 404
        assert c.get("/v1/completions").status_code == 405
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "ok", "max_tokens": 4, "temperature": 0,
                                           "return_token_ids": True})
        assert r.status_code == 200 and r.json()["choices"][0]["token_ids"] == single(model, list(b"ok"), 4)
        assert c.get("/health").json() == {"status": "ok"}
        text = c.get("/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values['flashxlstm_requests_rejected_total{status="400"}'] >= len(BAD) - 1
    for name in ("requests_total", "generation_tokens_total", "generation_tokens_per_second", "batch_occupancy",
                 "queue_length", "running_sequences"):
        assert f"flashxlstm_{name}" in values


CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_large_family_checkpoint_with_tokenizer_and_chat_template(tmp_path):
    """`flashxlstm serve`'s loader on a hub-layout 7B-family checkpoint with tokenizer.json and a chat template."""
    tokenizers = pytest.importorskip("tokenizers")
    from flashxlstm.cli.serve import add_arguments, build

    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator(["hello world, the xLSTM serves chats"] * 4, vocab_size=280, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>"])
    torch.manual_seed(0)
    model = flashxlstm.xLSTMLarge(flashxlstm.xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2,
                                                              vocab_size=288, eos_token_id=2))
    model.save_pretrained(tmp_path / "ckpt", for_transformers=False)  # a tiny shape transformers cannot run
    tok.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    (tmp_path / "ckpt" / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT_TEMPLATE, "bos_token": "<s>", "eos_token": {"content": "</s>"}}))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    engine, name = build(parser.parse_args(["--model", str(tmp_path / "ckpt"), "--max-batch", "4", "--device", "cpu"]))
    assert name == "ckpt" and engine.tokenizer.chat_template == CHAT_TEMPLATE
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    text = engine.tokenizer.chat_prompt(messages)
    assert text == "<s><|system|>be brief\n<|user|>hello world\n<|assistant|>"
    ids = engine.tokenizer.encode(text)
    assert ids[0] == 0  # BOS from the config, once
    loaded = engine.model
    want = generate(loaded, torch.tensor([ids]), 8, eos_token_id=2)[0, len(ids):].tolist()
    want = want[: want.index(2) + 1] if 2 in want else want
    with serve(engine, name) as url:
        r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "ckpt", "messages": messages, "max_tokens": 8, "temperature": 0, "return_token_ids": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["token_ids"] == want
    assert choice["finish_reason"] == ("stop" if want[-1] == 2 else "length")
    assert choice["message"]["content"] == engine.tokenizer.decode([t for t in want if t != 2])
