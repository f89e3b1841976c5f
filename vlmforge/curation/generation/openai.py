"""The `openai` generation backend: any OpenAI-compatible chat-completions endpoint (`vllm serve`,
hosted APIs).

Images travel inline as base64 data URLs (or as a URL given in `request.extra["image_url"]`). Requests
run in a bounded thread pool; 429, 5xx, read timeouts and dropped connections are retried with exponential
backoff (honouring Retry-After). An endpoint that cannot be reached at all (connection refused, unknown
host, no connection within connect_timeout) is not transient the same way: it is tried connect_retries
more times after a short wait, then fails with one line naming the URL. The API key is read from an
environment variable at setup and is sent only in the Authorization header: it is never printed, logged,
stored in options or shown in errors.
"""

from __future__ import annotations

import base64
import os
import queue
import random
import re
import sys
import threading
from typing import Any, Iterator

from vlmforge.curation.generation import GenerationRequest, Generator, PartialAnswers
from vlmforge.errors import UserError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
REQUEST_REFUSALS = {400, 413, 422}  # bad request, too large, unprocessable: this request, not the endpoint


def image_mime(data: bytes) -> str | None:
    """The MIME type of encoded image bytes, from their magic number: JPEG, PNG, WebP or GIF (what chat
    APIs accept), else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def data_url(data: bytes) -> str:
    """The image as a data URL; another format (BMP, TIFF) is sent as PNG, since chat APIs refuse it."""
    mime = image_mime(data)
    if mime is None:
        import io

        from PIL import Image

        try:
            image = Image.open(io.BytesIO(data))
            buf = io.BytesIO()
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buf, "PNG")
        except (OSError, ValueError) as e:
            raise UserError(f"an image to send cannot be decoded ({e})") from None
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class APIError(UserError):
    """The endpoint refused a request in a way retrying will not fix (bad key, bad model, bad request)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def about_request(self) -> bool:
        """Whether the refusal is about this request's content (a filtered image, a prompt too long),
        not about the endpoint, key or model that every request shares."""
        return self.status in REQUEST_REFUSALS


class FailedRequests(APIError):
    """Some requests of a batch failed: each one's error by request index. It reads as the first."""

    def __init__(self, errors: dict[int, APIError]):
        first = errors[min(errors)]
        super().__init__(str(first), first.status)
        self.errors = errors

    def __reduce__(self):  # a build's worker process sends it to the parent
        return (FailedRequests, (self.errors,))


class OpenAIGenerator(Generator):
    """Options: base_url (default $OPENAI_BASE_URL or api.openai.com), api_key_env (the variable holding
    the key, default OPENAI_API_KEY; unset is fine for local servers), concurrency (parallel requests, 8),
    max_retries (retries on 429/5xx/read timeouts/dropped connections, 6), backoff (first wait in seconds,
    1.0, doubling up to max_backoff 60), timeout (seconds to wait for an answer, 120), connect_timeout
    (seconds to wait for a connection, 10), connect_retries (retries, with the same backoff, when the endpoint
    cannot be reached, 1; 10 waits 2.5 to 5 minutes for a server that is still starting),
    n_per_request (ask for at most this many samples per request; the rest in further requests)."""

    backend = "openai"
    resources = {"cpu": 0.1}  # waits on the network, not on local compute

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 6, backoff: float = 1.0, max_backoff: float = 60.0,
                 timeout: float = 120.0, connect_timeout: float = 10.0, connect_retries: int = 1,
                 n_per_request: int | None = None, **options: Any):
        super().__init__(model, **options)
        if not model:
            raise UserError("the openai backend needs --model (the model name the endpoint serves)")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.lower().startswith(("http://", "https://")):  # httpx: "UnsupportedProtocol", per request
            raise UserError(f"base_url {self.base_url!r} needs its scheme: http://{self.base_url} or https://{self.base_url}")
        if self.base_url.endswith("/chat/completions"):  # requests would go to .../chat/completions/chat/completions
            raise UserError(f"base_url {self.base_url!r} is the endpoint; give the API's base URL: "
                            f"{self.base_url[: -len('/chat/completions')]}")
        self.api_key_env = api_key_env
        self.concurrency = _number("concurrency", concurrency, int, 1)
        self.max_retries = _number("max_retries", max_retries, int, 0)
        self.backoff = _number("backoff", backoff, float, 0)
        self.max_backoff = _number("max_backoff", max_backoff, float, 0)
        self.timeout = _number("timeout", timeout, float, 0.001)
        self.connect_timeout = _number("connect_timeout", connect_timeout, float, 0.001)
        self.connect_retries = _number("connect_retries", connect_retries, int, 0)
        self.n_per_request = None if n_per_request is None else _number("n_per_request", n_per_request, int, 1)
        self._warned = self._warned_empty = False
        self._stop = threading.Event()  # set on an interrupt: retry loops end, so the process can exit
        self._down: APIError | None = None  # the endpoint could not be reached during this batch
        self._key: str | None = None  # never part of options, repr or messages
        self._client = None

    def cache_identity(self) -> str | None:
        return f"{self.model} @ {self.base_url}"  # one model name served from two places may differ

    def __repr__(self) -> str:
        return f"OpenAIGenerator(model={self.model!r}, base_url={self.base_url!r}, key from ${self.api_key_env})"

    def __getstate__(self):
        # Workers read the key from their own environment; clients and events do not pickle.
        state = dict(self.__dict__)
        state["_key"] = None
        state["_client"] = None
        state["_stop"] = state["_down"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._stop = threading.Event()

    def setup(self) -> None:
        import httpx

        if self._client is not None:
            return
        self._key = os.environ.get(self.api_key_env, "").strip() or None  # a key file's line break is not part of it
        if self._key and not (self._key.isascii() and self._key.isprintable()):  # not sendable in a header
            raise UserError(f"${self.api_key_env} holds a character an API key does not have (a line break, "
                            "a non-ASCII letter); set it to the key alone")
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        timeout = httpx.Timeout(self.timeout, connect=min(self.connect_timeout, self.timeout))
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, limits=limits)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- request building ------------------------------------------------------------------------
    def messages(self, req: GenerationRequest) -> list[dict[str, Any]]:
        """Chat messages for one request: the system turn, then the user's text with the image."""
        text = req.prompt.replace("<image>\n", "").replace("<image>", "").strip()
        url = req.extra.get("image_url")
        if req.image is not None:
            url = data_url(req.image)
        content: Any = text
        if url:
            content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
        msgs: list[dict[str, Any]] = [{"role": "system", "content": req.system}] if req.system else []
        return msgs + [{"role": "user", "content": content}]

    def payload(self, req: GenerationRequest, n: int, seed: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages(req), "max_tokens": req.max_new_tokens,
                                "temperature": req.temperature, "top_p": req.top_p, "n": n,
                                "seed": req.seed if seed is None else seed}
        if req.stop:
            body["stop"] = list(req.stop)
        body.update(req.extra.get("api_params", {}))
        return body

    # -- sending ---------------------------------------------------------------------------------
    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff)
            except ValueError:
                pass
        base = min(self.backoff * 2 ** attempt, self.max_backoff)
        return base * (0.5 + random.random() / 2)  # jitter keeps parallel retries from colliding

    def _pause(self, seconds: float) -> None:
        """Wait before a retry; after an interrupt, give up instead."""
        if self._stop.wait(seconds):
            raise APIError("interrupted")

    def _post(self, body: dict[str, Any]) -> list[str]:
        import httpx

        last = ""
        attempt = unreachable = 0
        while True:
            self._pause(0)
            if self._down is not None:  # another request of the batch found nothing there: no need to try again
                raise self._down
            retry_after = None
            try:
                resp = self._client.post("/chat/completions", json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                # Nothing listens there (or the host is unknown): waiting minutes would rarely help.
                if unreachable >= self.connect_retries:
                    self._down = APIError(f"cannot connect to {self.base_url} ({_unreachable(e, self.connect_timeout)}); "
                                          "is the server running and the address right? Run again to resume "
                                          "once it answers")
                    raise self._down from None
                self._pause(self._wait(unreachable, None))
                unreachable += 1
                continue
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = (f"no answer within {self.timeout:g} s, the timeout" if isinstance(e, httpx.ReadTimeout)
                        else type(e).__name__)
            else:
                if resp.status_code == 200:
                    return self._choices(resp)
                if resp.status_code not in RETRY_STATUS or _out_of_quota(resp):
                    raise APIError(self._refusal(resp), resp.status_code)
                last = f"HTTP {resp.status_code}: {_error_text(resp)}"
                retry_after = resp.headers.get("retry-after")
            if attempt >= self.max_retries:
                break
            if not self._warned:  # retries can take minutes: say why the build is waiting, once
                self._warned = True
                sys.stderr.write(f"openai: {self.base_url} failed ({last}); retrying up to "
                                 f"{self.max_retries} times\n")
            self._pause(self._wait(attempt, retry_after))
            attempt += 1
        tries = "once" if self.max_retries == 0 else f"{self.max_retries + 1} times"
        raise APIError(f"{self.base_url} failed {tries} (last: {last}); run again to resume")

    def _refusal(self, resp) -> str:
        """One line for an answer retrying will not change, with what to check."""
        code = resp.status_code
        hint = ""
        if code in (401, 403):
            hint = (f"; the key in ${self.api_key_env} was refused" if self._key else
                    f"; ${self.api_key_env} is not set: set it to the endpoint's key")
        elif code == 404:
            hint = f"; check the model name ({self.model!r}) and that the base URL is the API's /v1"
        elif code == 429:
            hint = "; the account is out of quota"
        return f"{self.base_url} answered {code}: {_error_text(resp) or 'no message'}{hint}"

    def _choices(self, resp) -> list[str]:
        """The texts of a 200 answer; one that is not a chat completion (a proxy's login page) is an error."""
        try:
            doc = resp.json()
            if "choices" not in doc and doc.get("error"):  # some proxies put errors in a 200 answer
                raise APIError(f"{self.base_url} answered 200 with an error: {_error_text(resp)}")
            choices = sorted(doc.get("choices") or [], key=lambda c: c.get("index", 0))
            texts = [_text((c.get("message") or {}).get("content")) for c in choices]
            reason = next((c.get("finish_reason") for c, t in zip(choices, texts) if not t), False)
        except (ValueError, AttributeError, TypeError):
            raise APIError(f"{self.base_url} answered 200 but not with a chat completion (is it an "
                           f"OpenAI-compatible /v1 endpoint?): {resp.text[:120]!r}") from None
        if reason is not False and not self._warned_empty:  # say why answers are empty (all of them, often), once
            self._warned_empty = True
            why = f" (finish_reason {reason!r})" if reason else ""
            if reason == "length":
                why = " (finish_reason 'length': a reasoning model may need more max new tokens)"
            sys.stderr.write(f"openai: {self.base_url} answered without text{why}; such answers are empty\n")
        return texts

    def _one(self, req: GenerationRequest) -> list[str]:
        texts: list[str] = []
        while len(texts) < req.n:
            want = req.n - len(texts)
            if self.n_per_request:
                want = min(want, self.n_per_request)
            # A top-up request gets its own seed, else a seeded endpoint repeats the same samples.
            got = self._post(self.payload(req, want, seed=req.seed + len(texts)))
            if not got:
                raise APIError(f"{self.base_url} returned no choices")
            texts += got  # endpoints that ignore n return one choice; ask again for the rest
        return texts[: req.n]

    def stream(self, requests: list[GenerationRequest]) -> Iterator[tuple[int, list[str]]]:
        """Answers as they come. A request the endpoint refuses does not stop the others; after them,
        FailedRequests holds each failed one's error. An interrupt (Ctrl-C) sends no further request
        and ends the retries."""
        self.setup()
        self._stop = threading.Event()  # a fresh one: threads of an interrupted call stay stopped
        self._down = None
        failed: dict[int, APIError] = {}
        if len(requests) <= 1 or self.concurrency == 1:
            for i, req in enumerate(requests):
                try:
                    texts = self._one(req)
                except APIError as e:
                    failed[i] = e
                    if not e.about_request:  # the next request would fail the same way
                        break
                    continue
                yield i, texts
        else:
            try:
                for i, texts, error in _in_threads(self._one, requests, self.concurrency, self._stop):
                    if error is None:
                        yield i, texts
                    elif isinstance(error, APIError):
                        failed[i] = error
                    else:
                        raise error
            except BaseException:
                self._stop.set()  # queued requests are not sent and retries end
                raise
        if failed:
            raise FailedRequests(failed)

    def __call__(self, requests: list[GenerationRequest]) -> list[list[str]]:
        answers: dict[int, list[str]] = {}
        try:
            for i, texts in self.stream(requests):
                answers[i] = texts
        except APIError as e:
            if answers:  # the response cache keeps them; without one this reads as the error itself
                raise PartialAnswers(answers, e) from None
            raise
        return [answers[i] for i in range(len(requests))]


def _in_threads(fn, items: list, workers: int, stop: threading.Event) -> Iterator[tuple[int, Any, BaseException | None]]:
    """(index, fn(item), None) or (index, None, error) for each item as it finishes, `workers` at a time.
    Daemon threads: after an interrupt the process ends at once instead of waiting out the requests in
    flight (up to the timeout each); items not started when `stop` is set are skipped."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    done: queue.SimpleQueue = queue.SimpleQueue()
    for i, item in enumerate(items):
        todo.put((i, item))

    def work() -> None:
        while not stop.is_set():
            try:
                i, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, fn(item), None))
            except BaseException as e:  # handed to the caller
                done.put((i, None, e))

    for _ in range(min(workers, len(items))):
        threading.Thread(target=work, daemon=True).start()
    for _ in items:
        yield done.get()


def _text(content: Any) -> str:
    """A message's content as text: a string, or a list of parts whose text parts are joined (some
    servers answer that way); anything else (a number) as its JSON text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _number(name: str, value: Any, kind: type, minimum: float) -> Any:
    """An option given as text (-G timeout=abc) or out of range is one error line."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"openai option {name} must be a number, not {value!r}") from None
    if number < minimum:
        raise UserError(f"openai option {name} must be at least {minimum}, not {value!r}")
    return number


def _error_text(resp) -> str:
    """The endpoint's error message, short (bodies never hold our key; headers are not shown). OpenAI
    writes {"error": {"message"}}, older vLLM {"message"}, FastAPI {"detail"}; other bodies as they are."""
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    msg = None
    if isinstance(doc, dict):
        err = doc.get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        msg = msg or doc.get("message") or doc.get("detail")
    return " ".join(str(msg or resp.text).split())[:300]


def _out_of_quota(resp) -> bool:
    """OpenAI answers 429 both for a rate limit (retry) and for an exhausted quota (retrying cannot help)."""
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        return False
    return resp.status_code == 429 and isinstance(err, dict) and "insufficient_quota" in (err.get("code"), err.get("type"))


def _unreachable(error: Exception, connect_timeout: float) -> str:
    """Why a connection failed, in words: 'Connection refused', 'Name or service not known'."""
    import httpx

    if isinstance(error, httpx.ConnectTimeout):
        return f"no connection within {connect_timeout:g} s"
    return re.sub(r"^\[Errno -?\d+\]\s*", "", str(error)) or type(error).__name__
