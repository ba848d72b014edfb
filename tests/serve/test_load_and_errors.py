"""A bounded load test (every slot free afterwards, the server still answering) and every bad
request answered with its OpenAI error while a good request carries on."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx


def _post(server, path, body=None, content=None, headers=None):
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=60)


def _assert_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def _health(server):
    return httpx.get(server.url.removesuffix("/v1") + "/health", timeout=10).json()


def test_load_then_every_slot_is_free(server):
    clients, per_client = 6, 4

    def run(client):
        texts = []
        for number in range(per_client):
            response = _post(server, "/completions", {"model": "lwm", "prompt": f"client {client} request {number}",
                                                      "max_tokens": 6, "temperature": 0})
            assert response.status_code in (200, 429), response.text
            texts.append(response.status_code)
        return texts

    with ThreadPoolExecutor(clients) as pool:
        statuses = [status for result in pool.map(run, range(clients)) for status in result]
    assert statuses.count(200) >= clients * per_client // 2
    health = _health(server)
    assert health["free_slots"] == health["slots"] and health["waiting"] == 0
    after = _post(server, "/completions", {"prompt": "still there?", "max_tokens": 2, "temperature": 0})
    assert after.status_code == 200 and after.json()["choices"][0]["finish_reason"] == "length"


def test_bad_requests_get_their_errors_while_others_carry_on(server, media_root):
    good = {"model": "lwm", "prompt": "A long answer about", "max_tokens": 60, "temperature": 0, "stream": True}
    streamed = {}

    def stream():
        with httpx.stream("POST", server.url + "/completions", json=good, timeout=60) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        streamed["status"], streamed["lines"] = response.status_code, lines

    worker = threading.Thread(target=stream)
    worker.start()
    _assert_error(_post(server, "/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
    _assert_error(_post(server, "/completions", {"prompt": "x", "temperature": 5}), 400, "temperature")
    _assert_error(_post(server, "/completions", {"prompt": "x", "max_tokens": "many"}), 400, "max_tokens")
    _assert_error(_post(server, "/completions", {"prompt": [[]]}), 400, "prompt")
    _assert_error(_post(server, "/completions", {"prompt": [1, 99999]}), 400, "prompt")
    _assert_error(_post(server, "/completions", {"prompt": "x", "max_tokens": 10_000}), 400, "prompt")
    _assert_error(_post(server, "/completions", {"prompt": "x", "logprobs": 9}), 400, "logprobs")
    _assert_error(_post(server, "/completions", {"model": "gpt-4", "prompt": "x"}), 404, "model")
    _assert_error(httpx.get(server.url + "/nothing-here"), 404)
    _assert_error(_post(server, "/chat/completions", {"messages": []}), 400, "messages")
    _assert_error(_post(server, "/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}), 400)
    _assert_error(_post(server, "/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}), 400)
    video = {"type": "video_url", "video_url": {"url": "../outside.mp4"}}
    _assert_error(_post(server, "/chat/completions", {"messages": [{"role": "user", "content": [video]}]}), 403)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}
    _assert_error(_post(server, "/chat/completions", {"messages": [{"role": "user", "content": [image]}]}), 400)
    _assert_error(_post(server, "/completions", content=b"x" * 2_100_000, headers={"content-type": "application/json"}),
                  413)
    _too_many_frames(server)
    _api_key(server)
    worker.join(timeout=60)
    _queue_full(server)  # after the stream ended, so no slot frees while the queue is full
    assert streamed["status"] == 200 and streamed["lines"][-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in streamed["lines"][:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len("".join(chunk["choices"][0]["text"] for chunk in chunks)) > 0


def _too_many_frames(server):
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    parts = [{"type": "image_url", "image_url": {"url": url}}] * 5  # serve.max_frames is 4
    _assert_error(_post(server, "/chat/completions", {"messages": [{"role": "user", "content": parts}]}), 413)


def _queue_full(server):
    """Every slot busy and the queue full: the next request gets 429 (then the fillers are cancelled)."""
    from lwm.infer.requests import QueueFull, Request

    engine = server.state.engine
    engine.pause()  # nothing is admitted meanwhile, so the queue stays full
    handles = []
    try:
        for _ in range(64):
            try:
                handles.append(engine.submit(Request((1, 5, 6), max_tokens=200)))
            except QueueFull:
                break
        else:
            raise AssertionError("the queue never filled")
        _assert_error(_post(server, "/completions", {"prompt": "x", "max_tokens": 1}), 429)
    finally:
        for handle in handles:
            handle.cancel()
        engine.resume()
        for handle in handles:  # cancelled requests leave at the engine's next steps
            assert handle.done.wait(timeout=30)


def _api_key(server):
    state = server.state
    state.api_key = "sesame"
    try:
        _assert_error(_post(server, "/completions", {"prompt": "x", "max_tokens": 1}), 401)
        _assert_error(_post(server, "/completions", {"prompt": "x", "max_tokens": 1},
                            headers={"Authorization": "Bearer wrong"}), 401)
        ok = _post(server, "/completions", {"prompt": "x", "max_tokens": 1}, headers={"Authorization": "Bearer sesame"})
        assert ok.status_code == 200
    finally:
        state.api_key = ""


def test_disconnected_client_frees_its_slot(server):
    import time

    body = {"prompt": "Go on and on", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    for _ in range(200):
        health = _health(server)
        if health["free_slots"] == health["slots"]:
            break
        time.sleep(0.05)
    assert health["free_slots"] == health["slots"]
