"""The OpenAI-compatible HTTP API over an `Engine` (FastAPI; run it with uvicorn).

    POST /v1/completions        prompt (string or token ids) -> text; "stream": true for server-sent events
    POST /v1/chat/completions   messages -> the checkpoint's chat template -> text
    GET  /v1/models, /health, /metrics (Prometheus text)

Request fields: model, prompt | messages, max_tokens (default 16; chat: also max_completion_tokens, default the
server's max_tokens limit, i.e. until EOS or that limit), temperature
(0: greedy), top_p, seed, stop, stream, stream_options.include_usage; extensions: top_k, stop_token_ids,
ignore_eos, return_token_ids (adds the generated ids to each choice). n > 1, echo, logprobs, best_of and
non-zero penalties are refused. Every refusal is an HTTP 4xx with an OpenAI-style body
{"error": {"message", "type", "param", "code"}}; the server keeps serving. A client that disconnects
(mid-stream or while waiting) has its request aborted, which frees its slot at the next engine step.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import metrics
from .engine import Engine, EngineError, RequestHandle, RequestOutput
from .params import SamplingParams

UNSUPPORTED = {"echo": (False, None), "logprobs": (None, False), "top_logprobs": (None, 0), "best_of": (None, 1),
               "n": (None, 1), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
               "logit_bias": (None, {}), "suffix": (None, "")}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


def _field(body: dict, name: str, types: tuple, default: Any = None, what: str = "") -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(value)[:80]}", param=name)
    return value


def sampling_params(body: dict, max_tokens_key: tuple[str, ...] = ("max_tokens",),
                    default_max_tokens: int = 16) -> SamplingParams:
    for name, allowed in UNSUPPORTED.items():
        if name in body and body[name] not in allowed:
            raise APIError(400, f"'{name}' = {json.dumps(body[name])[:80]} is not supported by this server "
                                f"(allowed: {[a for a in allowed if a is not None] or 'unset'})", param=name)
    max_tokens = None
    for key in max_tokens_key:
        max_tokens = _field(body, key, (int,), None, "an integer") if max_tokens is None else max_tokens
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list):
        raise APIError(400, "'stop' must be a string or a list of strings", param="stop")
    params = SamplingParams(
        max_tokens=default_max_tokens if max_tokens is None else max_tokens,
        temperature=_field(body, "temperature", (int, float), 1.0, "a number"),
        top_k=_field(body, "top_k", (int,), None, "an integer"),
        top_p=_field(body, "top_p", (int, float), None, "a number"),
        seed=_field(body, "seed", (int,), None, "an integer"),
        stop=stop,
        stop_token_ids=_field(body, "stop_token_ids", (list,), [], "a list of integers"),
        ignore_eos=_field(body, "ignore_eos", (bool,), False, "a boolean"),
    )
    return params


def create_app(engine: Engine, model_name: str) -> FastAPI:
    """The application serving `engine` under the model id `model_name` (start the engine first)."""
    app = FastAPI(title="flashxlstm", docs_url=None, redoc_url=None, openapi_url=None)
    rejected: dict[int, int] = {}
    created = int(time.time())

    def refuse(err: APIError) -> JSONResponse:
        rejected[err.status] = rejected.get(err.status, 0) + 1
        return err.response()

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return refuse(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return refuse(APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", code=code))

    async def read_body(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
        model = body.get("model")
        if not isinstance(model, str):
            raise APIError(400, "'model' is required: a string naming the model (see GET /v1/models)", param="model")
        if model != model_name:
            raise APIError(404, f"the model '{model}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")
        return body

    def submit(prompt: Any, params: SamplingParams) -> RequestHandle:
        if not engine.alive:
            raise APIError(503, "the engine is not running", kind="server_error", code="engine_stopped")
        try:
            return engine.submit(prompt, params, request_id=uuid.uuid4().hex[:24], loop=asyncio.get_running_loop())
        except ValueError as e:
            msg = str(e)
            code = "context_length_exceeded" if "limit of" in msg and "prompt" in msg else None
            raise APIError(400, msg, code=code) from None
        except EngineError as e:
            raise APIError(429, str(e), code="queue_full", kind="rate_limit_error") from None

    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"status": "error", "message": "the engine thread is not running"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def get_metrics():
        return PlainTextResponse(metrics.render(engine, rejected), media_type=metrics.CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "flashxlstm"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) and not (isinstance(prompt, list) and prompt
                                                 and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            raise APIError(400, "'prompt' must be a string, a list with one string, or a list of token ids "
                                "(one prompt per request)", param="prompt")
        handle = submit(prompt, sampling_params(body))
        return await respond(request, body, handle, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request)
        if engine.tokenizer is None:
            raise APIError(400, "this model has no tokenizer, so it cannot take chat messages")
        messages = chat_messages(body.get("messages"))
        try:
            text = engine.tokenizer.chat_prompt(messages)
        except Exception as e:  # the template's own raise_exception (e.g. roles out of order) or a broken template
            raise APIError(400, f"the chat template rejected these messages: {e}", param="messages") from None
        params = sampling_params(body, ("max_completion_tokens", "max_tokens"), engine.config.max_tokens_limit)
        handle = submit(text, params)
        return await respond(request, body, handle, chat=True)

    async def respond(request: Request, body: dict, handle: RequestHandle, chat: bool):
        stream = _field(body, "stream", (bool,), False, "a boolean")
        options = _field(body, "stream_options", (dict,), {}, "an object")
        with_ids = _field(body, "return_token_ids", (bool,), False, "a boolean")
        meta = {"id": ("chatcmpl-" if chat else "cmpl-") + handle.request_id, "created": int(time.time()),
                "model": model_name}
        if stream:
            gen = sse(handle, meta, chat, with_ids, bool(options.get("include_usage")))
            return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        async def watch() -> None:  # a client that hangs up before the completion is whole frees its slot
            while not await request.is_disconnected():
                await asyncio.sleep(0.25)
            engine.abort(handle.request_id)

        watcher = asyncio.create_task(watch())
        outs: list[RequestOutput] = []
        try:
            async for out in handle:
                outs.append(out)
        finally:
            watcher.cancel()
            if not outs or not outs[-1].finished:
                engine.abort(handle.request_id)
        last = outs[-1]
        if last.finish_reason == "error":
            raise APIError(500, f"generation failed: {last.error}", kind="server_error")
        text = "".join(o.text for o in outs)
        choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if with_ids:
            choice["token_ids"] = [t for o in outs for t in o.token_ids]
        return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                "usage": usage(last)}

    async def sse(handle: RequestHandle, meta: dict, chat: bool, with_ids: bool, include_usage: bool):
        kind = "chat.completion.chunk" if chat else "text_completion"
        finished = False
        try:
            if chat:
                yield event({**meta, "object": kind, "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            async for out in handle:
                finished = out.finished
                if out.finish_reason == "error":
                    yield event({"error": {"message": f"generation failed: {out.error}", "type": "server_error",
                                           "param": None, "code": None}})
                    break
                if not out.text and not out.finished and not with_ids:
                    continue  # held back (an incomplete character, a possible stop string): nothing to send yet
                choice: dict[str, Any] = {"index": 0, "finish_reason": out.finish_reason}
                if chat:
                    choice["delta"] = {"content": out.text} if out.text or not out.finished else {}
                else:
                    choice["text"], choice["logprobs"] = out.text, None
                if with_ids:
                    choice["token_ids"] = out.token_ids
                chunk = {**meta, "object": kind, "choices": [choice]}
                if include_usage:
                    chunk["usage"] = None
                yield event(chunk)
                if finished and include_usage:
                    yield event({**meta, "object": kind, "choices": [], "usage": usage(out)})
            yield "data: [DONE]\n\n"
        finally:  # the client went away (the server cancels this generator) or the request ended
            if not finished:
                engine.abort(handle.request_id)

    return app


def event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage(out: RequestOutput) -> dict[str, int]:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens}


def chat_messages(messages: Any) -> list[dict[str, str]]:
    """Validate chat messages; content may be a string or a list of {"type": "text", "text": ...} parts."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}] must be an object with a string 'role'", param="messages")
        if m["role"] not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"messages[{i}].role '{m['role']}' is not one of system, developer, user, assistant",
                           param="messages")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"messages[{i}].content parts must be {{\"type\": \"text\", \"text\": ...}}",
                               param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")
        out.append({"role": m["role"], "content": content})
    return out
