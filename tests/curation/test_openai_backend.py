"""The openai backend against a small OpenAI-compatible server started on 127.0.0.1 by the test.

The server answers by rule (it stands in for a remote model), records what it was sent, and can be told
to fail with 429/5xx or to stall, so retries, backoff, concurrency and key handling are checked for real.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vlmforge.curation.generation import GenerationRequest
from vlmforge.curation.generation.openai import APIError, OpenAIGenerator
from vlmforge.errors import UserError
from vlmforge.evaluation.predictions import PREDICTIONS

KEY = "sk-test-3f9a-do-not-leak"
KEY_ENV = "VLMFORGE_TEST_API_KEY"


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


class ChatServer:
    """POST /v1/chat/completions. `plan` holds what the next requests get instead of an answer: an HTTP
    status to fail with, a (status, body, headers) reply, "stall" (answer after 1 s, past the client's
    timeout), or a function to call before stalling."""

    def __init__(self, port: int = 0):
        self.requests: list[dict] = []
        self.plan: list = []
        self.ignore_n = False
        self.fixed_reply: str | None = None  # every answer's text, when set
        self.delay = 0.0
        self.refuse: str | None = None  # questions with this word get 400, as a content filter answers
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"auth": self.headers.get("Authorization"), "path": self.path, "body": body})
                    action = server.plan.pop(0) if server.plan else None
                    if server.refuse and server.refuse in json.dumps(body["messages"]):
                        action = (400, {"error": {"message": "the prompt was filtered", "code": "content_filter"}})
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    if action == "html":  # a proxy's login page where the API should be
                        page = b"<html><body>Please sign in</body></html>"
                        self.send_response(200)
                        self.send_header("Content-Type", "text/html")
                        self.send_header("Content-Length", str(len(page)))
                        self.end_headers()
                        self.wfile.write(page)
                        return
                    if isinstance(action, tuple):  # (status, JSON body, headers) as given
                        self._send(*action)
                        return
                    if isinstance(action, int):
                        self._send(action, {"error": {"message": f"planned failure {action}"}},
                                   {"Retry-After": "0"} if action == 429 else {})
                        return
                    if callable(action):  # something to do meanwhile (an interrupt), then stall
                        action()
                        action = "stall"
                    time.sleep(1.0 if action == "stall" else server.delay)
                    self._send(200, server.answer(body))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with server.lock:
                        server.inflight -= 1

            def _send(self, code, doc, headers=None):
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, body: dict) -> dict:
        """A rule-based 'model': POPE-style questions get yes/no by whether they mention a dog."""
        content = body["messages"][-1]["content"]
        text = content if isinstance(content, str) else next(c["text"] for c in content if c["type"] == "text")
        if self.fixed_reply is not None:
            reply = self.fixed_reply
        elif text.startswith("Is there"):
            reply = "Yes, there is a dog." if "dog" in text else "No, there is not."
        else:
            reply = f"echo: {text}"
        n = 1 if self.ignore_n else body.get("n", 1)
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": i, "message": {"role": "assistant", "content": f"{reply} (seed {body['seed']}, {i})"
                                                     if n > 1 or self.ignore_n else reply}, "finish_reason": "stop"}
                            for i in range(n)]}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def _gen(server, **kw) -> OpenAIGenerator:
    kw = {"base_url": server.url, "api_key_env": KEY_ENV, "backoff": 0.01, "max_backoff": 0.05, **kw}
    return OpenAIGenerator(model="test-model", **kw)


def test_images_as_data_urls_key_in_header_only(server, monkeypatch, caplog, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    png = _png()
    gen = _gen(server)
    out = gen([GenerationRequest(prompt="<image>\nWhat is this?", image=png, n=2, seed=5, system="Be brief."),
               GenerationRequest(prompt="Say hi", max_new_tokens=7, stop=["\n"])])
    assert out == [["echo: What is this? (seed 5, 0)", "echo: What is this? (seed 5, 1)"], ["echo: Say hi"]]
    first = next(r for r in server.requests if r["body"]["n"] == 2)
    assert first["auth"] == f"Bearer {KEY}" and first["path"] == "/v1/chat/completions"
    msgs = first["body"]["messages"]
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    text, image = msgs[1]["content"]
    assert text == {"type": "text", "text": "What is this?"}  # the <image> marker is not sent as text
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == png
    second = next(r for r in server.requests if r["body"]["n"] == 1)["body"]
    assert second["max_tokens"] == 7 and second["stop"] == ["\n"] and second["messages"][0]["content"] == "Say hi"
    # The key is sent in the header and nowhere else: not in repr, options, pickles, logs or output.
    state = pickle.dumps(gen)
    printed = capsys.readouterr()
    for place in (repr(gen), str(gen.options), caplog.text, printed.out, printed.err):
        assert KEY not in place
    assert KEY.encode() not in state


def test_retries_with_backoff_on_429_5xx_and_timeouts(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.plan = [429, 500, 503]
    gen = _gen(server)
    assert gen([GenerationRequest(prompt="retry me")]) == [["echo: retry me"]]
    assert len(server.requests) == 4
    assert server.requests[0]["auth"] is None  # no key set: fine for a local `vllm serve`
    server.plan = ["stall"]
    gen = _gen(server, timeout=0.3)
    assert gen([GenerationRequest(prompt="slow")]) == [["echo: slow"]]
    assert len(server.requests) == 6


def test_gives_up_after_retries_and_on_client_errors(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    server.plan = [503, 503, 503]
    with pytest.raises(APIError, match="failed 3 times .*HTTP 503"):
        _gen(server, max_retries=2)([GenerationRequest(prompt="x")])
    assert len(server.requests) == 3
    server.plan = [401]
    with pytest.raises(APIError) as err:
        _gen(server)([GenerationRequest(prompt="x")])
    assert len(server.requests) == 4  # not retried
    assert "401" in str(err.value) and KEY_ENV in str(err.value) and KEY not in str(err.value)


def test_bounded_concurrency_keeps_order(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.delay = 0.15
    gen = _gen(server, concurrency=2)
    out = gen([GenerationRequest(prompt=f"q{i}") for i in range(6)])
    assert out == [[f"echo: q{i}"] for i in range(6)]
    assert server.max_inflight == 2


def test_endpoint_ignoring_n_is_asked_again(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.ignore_n = True
    out = _gen(server)([GenerationRequest(prompt="s", n=3, seed=10, temperature=1.0)])
    assert len(server.requests) == 3
    assert out == [["echo: s (seed 10, 0)", "echo: s (seed 11, 0)", "echo: s (seed 12, 0)"]]  # fresh seed per top-up


def test_eval_pope_with_the_api_runner(server, monkeypatch, tmp_path):
    from vlmforge.evaluation.items import ReadOptions
    from vlmforge.evaluation.run import evaluate
    from vlmforge.evaluation.runners import GeneratorRunner, attach_image_urls, load_image_urls
    from vlmforge.evaluation.tasks import get_task

    monkeypatch.setenv(KEY_ENV, KEY)
    images = tmp_path / "val2014"
    images.mkdir()
    rows = [("dog", "yes"), ("cat", "no"), ("car", "yes"), ("dog", "no"), ("bus", "no")]
    lines = []
    for i, (obj, label) in enumerate(rows):
        (images / f"{i}.png").write_bytes(_png())
        lines.append(json.dumps({"question_id": i, "image": f"{i}.png", "text": f"Is there a {obj} in the image?",
                                 "label": label}))
    (tmp_path / "coco_pope_popular.json").write_text("\n".join(lines) + "\n")
    task = get_task("pope")
    ds = task.read([tmp_path / "coco_pope_popular.json"], ReadOptions(image_root=images))
    runner = GeneratorRunner("openai", "test-model", batch_size=4, base_url=server.url, api_key_env=KEY_ENV,
                             concurrency=2, backoff=0.01)
    server.plan = [429]
    s = evaluate(task, ds, runner, tmp_path / "out", quiet=True, plots=False)
    # answers: yes (dog), no, no, yes (dog), no -> TP 1, TN 2, FN 1 (car), FP 1 (second dog)
    m = s["metrics"]["by_category"]["popular"]
    assert (m["tp"], m["tn"], m["fn"], m["fp"]) == (1, 2, 1, 1)
    assert s["metrics"]["accuracy"] == pytest.approx(3 / 5) and s["model"] == "test-model" and s["backend"] == "openai"
    assert len(server.requests) == 6  # five questions, one retried
    assert all(r["body"]["messages"][-1]["content"][1]["image_url"]["url"].startswith("data:image/png")
               for r in server.requests)
    # A rerun finds every prediction done and asks nothing.
    evaluate(task, ds, runner, tmp_path / "out", quiet=True, plots=False)
    assert len(server.requests) == 6
    assert KEY not in (tmp_path / "out" / "predictions.jsonl").read_text() + (tmp_path / "out" / "run.json").read_text()
    # Closed models that fetch images themselves: URLs from a CSV instead of bytes.
    csv_path = tmp_path / "urls.csv"
    csv_path.write_text("id,url\n" + "".join(f"{i}.png,https://example.org/{i}.png\n" for i in range(5)))
    assert attach_image_urls(ds.items, load_image_urls(csv_path)) == 5
    evaluate(task, ds, runner, tmp_path / "urls", quiet=True, plots=False)
    sent = [r["body"]["messages"][-1]["content"][1]["image_url"]["url"] for r in server.requests[6:]]
    assert sorted(sent) == [f"https://example.org/{i}.png" for i in range(5)]


def _pope(tmp_path, objects: list[str], labels: list[str] | None = None):
    from vlmforge.evaluation.items import ReadOptions
    from vlmforge.evaluation.tasks import get_task

    (tmp_path / "0.png").write_bytes(_png())
    q = tmp_path / "coco_pope_random.json"
    q.write_text("".join(json.dumps({"question_id": i, "image": "0.png", "text": f"Is there a {obj} in the image?",
                                     "label": (labels or ["yes"] * len(objects))[i]}) + "\n"
                         for i, obj in enumerate(objects)))
    task = get_task("pope")
    return task, task.read([q], ReadOptions(image_root=tmp_path))


def test_eval_records_an_item_the_endpoint_refuses_and_keeps_a_failed_batchs_answers(server, monkeypatch, tmp_path):
    from vlmforge.evaluation.run import evaluate
    from vlmforge.evaluation.runners import GeneratorRunner

    monkeypatch.delenv(KEY_ENV, raising=False)
    task, ds = _pope(tmp_path, ["dog", "cat", "dog", "bus", "dog", "cow"], ["yes", "no", "yes", "no", "yes", "no"])

    def runner():
        return GeneratorRunner("openai", "m", batch_size=4, base_url=server.url, api_key_env=KEY_ENV,
                               concurrency=2, backoff=0.01)

    # One item refused (a content filter): recorded with the endpoint's words, counted, and wrong.
    server.refuse = "cat"
    s = evaluate(task, ds, runner(), tmp_path / "out", quiet=True, plots=False)
    assert s["counts"]["refused"] == 1 and s["metrics"]["accuracy"] == pytest.approx(5 / 6)
    recs = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / PREDICTIONS).read_text().splitlines())}
    assert "answered 400: the prompt was filtered" in recs["1"]["refused"] and recs["1"]["prediction"] is None
    assert len(server.requests) == 6
    evaluate(task, ds, runner(), tmp_path / "out", quiet=True, plots=False)
    assert len(server.requests) == 6  # a rerun asks nothing
    # Every item of a batch refused is the requests' shape, not the items: an error, nothing recorded.
    server.refuse = "image"
    with pytest.raises(APIError, match="answered 400"):
        evaluate(task, ds, runner(), tmp_path / "all", quiet=True, plots=False)
    assert (tmp_path / "all" / PREDICTIONS).read_text() == ""
    # A request that stops the run (a bad key) keeps the batch's other answers: a rerun asks only the rest.
    server.refuse = None
    server.plan = [401]
    with pytest.raises(APIError, match="answered 401"):
        evaluate(task, ds, runner(), tmp_path / "key", quiet=True, plots=False)
    assert len((tmp_path / "key" / PREDICTIONS).read_text().splitlines()) == 3
    asked = len(server.requests)
    s = evaluate(task, ds, runner(), tmp_path / "key", quiet=True, plots=False)
    assert len(server.requests) == asked + 3 and s["metrics"]["accuracy"] == 1.0 and "refused" not in s["counts"]


def test_cli_eval_with_openai_backend(server, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from vlmforge.cli import app

    monkeypatch.setenv(KEY_ENV, KEY)
    (tmp_path / "0.png").write_bytes(_png())
    q = tmp_path / "coco_pope_random.json"
    q.write_text(json.dumps({"question_id": 0, "image": "0.png", "text": "Is there a dog?", "label": "yes"}) + "\n")
    res = CliRunner().invoke(app, ["eval", "--task", "pope", "--data", str(q), "--backend", "openai", "--model", "m",
                                   "--api-base", server.url, "--api-key-env", KEY_ENV, "--concurrency", "2",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "| accuracy | 1.0000 |" in res.output and KEY not in res.output
    assert server.requests[0]["auth"] == f"Bearer {KEY}" and server.requests[0]["body"]["model"] == "m"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["backend"] == "openai"


def test_bad_answers_and_bad_options_are_one_error_line(server, monkeypatch, tmp_path):
    from vlmforge.curation.generation import make_generator

    monkeypatch.delenv(KEY_ENV, raising=False)
    server.plan = ["html"]
    with pytest.raises(APIError, match="not with a chat completion .*Please sign in"):
        _gen(server)([GenerationRequest(prompt="x")])
    server.plan = [503, 503]
    with pytest.raises(APIError, match="failed 2 times .*HTTP 503: planned failure 503"):  # the server's words
        _gen(server, max_retries=1)([GenerationRequest(prompt="x")])
    with pytest.raises(UserError, match="timeout must be a number, not 'abc'"):
        _gen(server, timeout="abc")
    with pytest.raises(UserError, match="max_retries must be at least 0"):
        _gen(server, max_retries=-1)
    with pytest.raises(UserError, match="base_url '127.0.0.1:8000/v1' needs its scheme: http://127.0.0.1:8000/v1"):
        make_generator("openai", "m", cache_dir=tmp_path, base_url="127.0.0.1:8000/v1")
    with pytest.raises(UserError, match=r"is the endpoint; give the API's base URL: http://h:8000/v1$"):
        make_generator("openai", "m", cache_dir=tmp_path, base_url="http://h:8000/v1/chat/completions/")
    with pytest.raises(UserError, match="the openai backend has no option 'base-url'; its options: base_url"):
        make_generator("openai", "m", cache_dir=tmp_path, **{"base-url": server.url})
    make_generator("openai", "m", cache_dir=tmp_path, base_url=server.url, device="cuda")  # shared options pass


def test_cache_keys_hold_the_endpoint_and_empty_answers_are_not_kept(tmp_path, monkeypatch):
    from vlmforge.curation.generation import make_generator

    monkeypatch.delenv(KEY_ENV, raising=False)
    a, b = ChatServer(), ChatServer()
    try:
        req = [GenerationRequest(prompt="same question")]
        for srv in (a, b):  # the same model name at two endpoints: each is asked
            assert make_generator("openai", "m", cache_dir=tmp_path, base_url=srv.url)(req) == [["echo: same question"]]
        assert len(a.requests) == len(b.requests) == 1
        make_generator("openai", "m", cache_dir=tmp_path, base_url=a.url)(req)
        assert len(a.requests) == 1  # cached
        a.fixed_reply = ""
        empty = [GenerationRequest(prompt="empty")]
        for _ in range(2):
            assert make_generator("openai", "m", cache_dir=tmp_path, base_url=a.url)(empty) == [[""]]
        assert len(a.requests) == 3  # an empty answer is asked again, not served from the cache
    finally:
        a.close()
        b.close()


def test_content_as_parts_or_a_number_is_text(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)

    class Reply:
        def __init__(self, content):
            self.content = content

        def json(self):
            return {"choices": [{"index": 0, "message": {"content": self.content}}]}

    gen = _gen(server)
    assert gen._choices(Reply([{"type": "text", "text": "a "}, {"type": "text", "text": "dog"}])) == ["a dog"]
    assert gen._choices(Reply(7)) == ["7"] and gen._choices(Reply(None)) == [""]


def test_a_failed_request_keeps_the_batch_answers_that_came(server, monkeypatch, tmp_path):
    from vlmforge.curation.generation import PartialAnswers, make_generator

    monkeypatch.delenv(KEY_ENV, raising=False)
    reqs = [GenerationRequest(prompt=f"question {i}") for i in range(4)]
    server.plan = [400]  # one of the four (whichever arrives first) is refused
    with pytest.raises(APIError, match="answered 400"):
        make_generator("openai", "m", cache_dir=tmp_path, base_url=server.url, backoff=0.01)(reqs)
    assert len(server.requests) == 4
    again = make_generator("openai", "m", cache_dir=tmp_path, base_url=server.url)(reqs)
    assert again == [[f"echo: question {i}"] for i in range(4)]
    assert len(server.requests) == 5  # only the refused one is asked again
    server.plan = [400]
    with pytest.raises(PartialAnswers, match="answered 400"):  # no cache: the same error line
        _gen(server)(reqs)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on leaving: nothing listens there


def test_an_unreachable_endpoint_fails_fast_naming_the_url(monkeypatch):
    import httpx

    monkeypatch.delenv(KEY_ENV, raising=False)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    gen = OpenAIGenerator(model="m", base_url=url, api_key_env=KEY_ENV)  # default backoff and retries
    start = time.monotonic()
    with pytest.raises(APIError, match=rf"cannot connect to {url} \(Connection refused\); is the server running"):
        gen([GenerationRequest(prompt="x")])
    assert time.monotonic() - start < 5  # one quick retry, not six with backoff (about a minute)
    # Tried 1 + connect_retries times; a connection that times out reads the same, with the limit.
    tries = []

    def no_connection(*args, **kwargs):
        tries.append(1)
        raise httpx.ConnectTimeout("timed out")

    gen = OpenAIGenerator(model="m", base_url=url, api_key_env=KEY_ENV, backoff=0.01, connect_retries=2,
                          connect_timeout=3)
    gen.setup()
    monkeypatch.setattr(gen._client, "post", no_connection)
    with pytest.raises(APIError, match=rf"cannot connect to {url} \(no connection within 3 s\)"):
        gen([GenerationRequest(prompt="x")])
    assert len(tries) == 3
    assert gen._client.timeout.connect == 3 and gen._client.timeout.read == 120


def test_refusals_say_what_to_check_and_odd_error_bodies_are_read(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    quota = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
    server.plan = [(401, {"error": {"message": "Incorrect API key provided"}}),
                   (404, {"object": "error", "message": "The model `m` does not exist."}),  # older vLLM
                   (404, {"detail": "Not Found"}),  # FastAPI: a base URL without /v1
                   (400, "just a string"), (400, [1, 2]),
                   (429, quota)]
    expected = [rf"answered 401: Incorrect API key provided; \${KEY_ENV} is not set",
                r"answered 404: The model `m` does not exist.; check the model name \('test-model'\)",
                r"answered 404: Not Found; check the model name .* the API's /v1",
                r"answered 400: \"just a string\"", r"answered 400: \[1, 2\]",
                r"answered 429: You exceeded your current quota; the account is out of quota"]
    for n, pattern in enumerate(expected, 1):
        with pytest.raises(APIError, match=pattern):
            _gen(server)([GenerationRequest(prompt="x")])
        assert len(server.requests) == n  # none of them retried
    monkeypatch.setenv(KEY_ENV, KEY)
    server.plan = [401]
    with pytest.raises(APIError, match=rf"the key in \${KEY_ENV} was refused"):
        _gen(server)([GenerationRequest(prompt="x")])
    # A negative Retry-After waits nothing (it crashed time.sleep); a slow server's error names the timeout.
    server.plan = [(503, {"error": "busy"}, {"Retry-After": "-3"})]
    assert _gen(server)([GenerationRequest(prompt="y")]) == [["echo: y"]]
    server.plan = ["stall", "stall"]
    with pytest.raises(APIError, match=r"failed 2 times \(last: no answer within 0.3 s, the timeout\)"):
        _gen(server, timeout=0.3, max_retries=1)([GenerationRequest(prompt="z")])


def test_cli_eval_against_a_dead_or_slow_endpoint_is_one_error_line(server, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from vlmforge.cli import app

    monkeypatch.delenv(KEY_ENV, raising=False)
    (tmp_path / "0.png").write_bytes(_png())
    q = tmp_path / "coco_pope_random.json"
    q.write_text("".join(json.dumps({"question_id": i, "image": "0.png", "text": f"Is there a dog {i}?",
                                     "label": "yes"}) + "\n" for i in range(20)))
    base = ["eval", "--task", "pope", "--data", str(q), "--backend", "openai", "--model", "m", "--api-key-env", KEY_ENV]
    dead = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    res = CliRunner().invoke(app, base + ["--api-base", dead, "--out", str(tmp_path / "dead")])
    assert isinstance(res.exception, UserError)  # main() prints it as one line
    assert f"cannot connect to {dead} (Connection refused)" in str(res.exception)
    assert time.monotonic() - start < 10  # it took about two minutes
    server.plan = ["stall"]
    res = CliRunner().invoke(app, base + ["--api-base", server.url, "--timeout", "0.3", "--max-retries", "0",
                                          "--concurrency", "1", "--out", str(tmp_path / "slow")])
    assert isinstance(res.exception, UserError)
    assert "failed once (last: no answer within 0.3 s, the timeout)" in str(res.exception)


def test_an_interrupt_keeps_the_answers_that_came_and_sends_no_more(server, monkeypatch, tmp_path):
    import os
    import signal

    from vlmforge.curation.generation import make_generator

    monkeypatch.delenv(KEY_ENV, raising=False)
    reqs = [GenerationRequest(prompt=f"question {i}") for i in range(8)]

    def ctrl_c():  # while two requests are in flight, after the first two answers came
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    server.plan = [None, None, ctrl_c] + ["stall"] * 5
    gen = make_generator("openai", "m", cache_dir=tmp_path, base_url=server.url, concurrency=2)
    with pytest.raises(KeyboardInterrupt):
        gen(reqs)
    assert len(list(tmp_path.rglob("*.json"))) == 2  # the two answers that came are kept
    assert len(server.requests) == 4
    time.sleep(1.5)  # the requests in flight end; the queued ones are never sent
    assert len(server.requests) == 4
    again = make_generator("openai", "m", cache_dir=tmp_path, base_url=server.url)(reqs)
    assert again == [[f"echo: question {i}"] for i in range(8)] and len(server.requests) == 10


def test_a_refused_request_does_not_stop_the_others_but_a_bad_key_does(server, monkeypatch):
    from vlmforge.curation.generation.openai import FailedRequests

    monkeypatch.delenv(KEY_ENV, raising=False)
    reqs = [GenerationRequest(prompt=p) for p in ("a dog", "a cat", "a cow")]
    server.refuse = "cat"
    gen = _gen(server, concurrency=1)
    got = {}
    with pytest.raises(FailedRequests, match="answered 400: the prompt was filtered") as err:
        for i, texts in gen.stream(reqs):
            got[i] = texts
    assert got == {0: ["echo: a dog"], 2: ["echo: a cow"]} and list(err.value.errors) == [1]
    assert err.value.about_request
    server.refuse, server.plan = None, [401]
    with pytest.raises(FailedRequests, match="answered 401") as err:
        list(gen.stream(reqs))
    assert len(server.requests) == 4 and not err.value.about_request  # the next two would fail the same way
    # An endpoint found unreachable by one request fails the batch's others at once.
    gen = OpenAIGenerator(model="m", base_url=f"http://127.0.0.1:{_closed_port()}/v1", api_key_env=KEY_ENV,
                          concurrency=4, backoff=0.05)
    gen.setup()
    tries = []
    post = gen._client.post
    monkeypatch.setattr(gen._client, "post", lambda *a, **kw: tries.append(1) or post(*a, **kw))
    with pytest.raises(FailedRequests, match="cannot connect") as err:
        list(gen.stream([GenerationRequest(prompt=f"q{i}") for i in range(16)]))
    assert len(err.value.errors) == 16 and len(tries) <= 8  # not a try and a retry for each of the 16


def test_batch_errors_cross_to_the_parent_process():
    """A build's worker process raises them; the parent unpickles them (they failed to unpickle, which
    broke the process pool instead of printing the error line)."""
    from vlmforge.curation.generation import PartialAnswers
    from vlmforge.curation.generation.openai import FailedRequests

    failed = FailedRequests({2: APIError("answered 400: filtered", 400), 5: APIError("answered 401: key", 401)})
    back = pickle.loads(pickle.dumps(failed))
    assert str(back) == "answered 400: filtered" and back.about_request and list(back.errors) == [2, 5]
    part = pickle.loads(pickle.dumps(PartialAnswers({0: ["a"]}, failed)))
    assert part.answers == {0: ["a"]} and str(part) == "answered 400: filtered" and part.error.errors[5].status == 401


def test_an_answer_without_text_is_empty_and_says_why_once(server, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    cut = {"choices": [{"index": 0, "message": {"role": "assistant", "content": None, "reasoning_content": "Hmm"},
                        "finish_reason": "length"}]}
    server.plan = [(200, cut), (200, cut)]
    gen = _gen(server)
    assert gen([GenerationRequest(prompt="x")]) == [[""]] and gen([GenerationRequest(prompt="y")]) == [[""]]
    err = capsys.readouterr().err
    assert err.count("answered without text") == 1 and "'length': a reasoning model may need more max new tokens" in err


def test_a_key_with_a_line_break_is_trimmed_and_one_that_cannot_be_sent_is_one_error_line(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, f"  {KEY}\n")  # read from a file with its line break
    assert _gen(server)([GenerationRequest(prompt="x")]) == [["echo: x"]]
    assert server.requests[-1]["auth"] == f"Bearer {KEY}"
    monkeypatch.setenv(KEY_ENV, KEY + "\u00e9")  # it crashed with UnicodeEncodeError
    with pytest.raises(UserError, match=rf"\${KEY_ENV} holds a character an API key does not have") as err:
        _gen(server)([GenerationRequest(prompt="x")])
    assert KEY not in str(err.value)
    monkeypatch.setenv(KEY_ENV, KEY + "\nsecond line")  # it was retried six times as a 'LocalProtocolError'
    with pytest.raises(UserError, match="holds a character"):
        _gen(server)([GenerationRequest(prompt="x")])
    assert len(server.requests) == 1
    monkeypatch.delenv(KEY_ENV)
    server.plan = [(200, {"error": {"message": "upstream model overloaded"}})]  # a proxy's error in a 200 answer
    with pytest.raises(APIError, match="answered 200 with an error: upstream model overloaded"):
        _gen(server)([GenerationRequest(prompt="y")])


def test_ctrl_c_ends_the_process_without_waiting_for_the_requests_in_flight(server, monkeypatch, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    server.delay = 6.0  # a slow model
    script = ("import sys\nfrom vlmforge.curation.generation import GenerationRequest\n"
              "from vlmforge.curation.generation.openai import OpenAIGenerator\n"
              "OpenAIGenerator(model='m', base_url=sys.argv[1], concurrency=2)"
              "([GenerationRequest(prompt=f'q{i}') for i in range(4)])\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", script, server.url], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(server.requests) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        assert proc.wait(timeout=20) != 0 and "KeyboardInterrupt" in proc.stderr.read()
        assert time.monotonic() - start < 3  # the two answers in flight take six seconds
        assert len(server.requests) == 2  # the queued two were never sent
    finally:
        proc.kill()


def test_cli_eval_says_how_to_go_on_after_ctrl_c(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import vlmforge.evaluation.run
    from vlmforge.cli import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vlmforge.evaluation.run, "evaluate", interrupted)
    (tmp_path / "0.png").write_bytes(_png())
    q = tmp_path / "coco_pope_random.json"
    q.write_text(json.dumps({"question_id": 0, "image": "0.png", "text": "Is there a dog?", "label": "yes"}) + "\n")
    res = CliRunner().invoke(app, ["eval", "--task", "pope", "--data", str(q), "--backend", "openai", "--model", "m",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 130
    assert f"interrupted: the predictions so far are in {tmp_path / 'out' / 'predictions.jsonl'}; run the same" in res.output


def test_a_call_after_an_interrupted_one_does_not_wake_its_threads(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.delay = 0.3
    gen = _gen(server, concurrency=2)
    answers = gen.stream([GenerationRequest(prompt=f"old {i}") for i in range(8)])
    next(answers)
    answers.close()  # what an interrupt in the caller does
    assert gen([GenerationRequest(prompt="new")]) == [["echo: new"]]
    time.sleep(1.0)
    old = [r for r in server.requests if "old" in json.dumps(r["body"]["messages"])]
    assert len(old) <= 4  # the first two, and at most one more each that had started: not all eight


def test_an_image_in_a_format_chat_apis_refuse_is_sent_as_png(server, monkeypatch):
    import io

    from PIL import Image

    from vlmforge.curation.generation.vllm import chat_messages

    monkeypatch.delenv(KEY_ENV, raising=False)
    buf = io.BytesIO()
    Image.new("RGB", (5, 4), (10, 200, 30)).save(buf, "BMP")  # it was an error: 'not JPEG, PNG, WebP or GIF'
    assert _gen(server)([GenerationRequest(prompt="<image>\nWhat?", image=buf.getvalue())]) == [["echo: What?"]]
    url = server.requests[-1]["body"]["messages"][-1]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG" and sent.size == (5, 4) and sent.getpixel((2, 2)) == (10, 200, 30)
    vllm_url = chat_messages(GenerationRequest(prompt="x", image=buf.getvalue()))[0]["content"][0]["image_url"]["url"]
    assert vllm_url == url  # the vllm backend builds its data URLs the same way
    with pytest.raises(UserError, match="an image to send cannot be decoded"):
        _gen(server)([GenerationRequest(prompt="x", image=b"not an image at all")])


def test_connect_retries_back_off_to_wait_for_a_server_still_starting(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    port = _closed_port()
    started = []
    timer = threading.Timer(1.5, lambda: started.append(ChatServer(port)))  # `vllm serve` still loading
    timer.start()
    try:
        gen = OpenAIGenerator(model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV,
                              connect_retries=6, backoff=0.2, max_backoff=10)
        assert gen([GenerationRequest(prompt="up yet?")]) == [["echo: up yet?"]]  # waits 0.1-0.2, 0.2-0.4, 0.4-0.8 ...
    finally:
        timer.join()
        for srv in started:
            srv.close()
