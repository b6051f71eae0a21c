"""The official `openai` Python package against `conclave serve`.

Run by tests/server.rs (`the_openai_python_client_works`), which starts the servers and sets
CONCLAVE_URL, CONCLAVE_BUSY_URL (a server with --max-queue 1), CONCLAVE_KEY and
CONCLAVE_METRICS_URL, with the Python of the virtual environment it makes under target/tmp
(tests/common/mod.rs, `python_with_openai`), where `openai` and `prometheus-client` are installed.
"""
import os
import sys
import traceback
import urllib.request

try:
    import openai
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError as e:
    sys.exit(f"{e}: run this through `cargo test --release --test server`, which makes a "
             "virtual environment with openai and prometheus-client under target/tmp")

URL = os.environ["CONCLAVE_URL"]
BUSY_URL = os.environ["CONCLAVE_BUSY_URL"]
KEY = os.environ["CONCLAVE_KEY"]
MODEL = "smollm2-135m"
# No retries: a 429 must surface as RateLimitError rather than be retried away.
client = openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0, timeout=600)
QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_chat():
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                       max_tokens=12)
    assert r.object == "chat.completion"
    assert "Paris" in r.choices[0].message.content, r
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream():
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                           max_tokens=12)
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                            max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == whole.choices[0].message.content, (text, whole)
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_n3():
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, n=3, temperature=1.0,
                                       seed=5, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1, 2], r


def test_completions():
    r = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=4,
                                  temperature=0)
    assert r.choices[0].text, r


def test_logprobs():
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                       max_tokens=8, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content, r
    for t in content:
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob, t
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                            max_tokens=8, logprobs=True, top_logprobs=3,
                                            stream=True)
    streamed = [t for chunk in stream for c in chunk.choices if c.logprobs
                for t in c.logprobs.content]
    assert streamed == content, (streamed, content)
    t = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=4,
                                  temperature=0, logprobs=2)
    assert "".join(t.choices[0].logprobs.tokens) == t.choices[0].text, t


def test_ensemble():
    r = client.chat.completions.create(
        model="conclave/tiny", seed=2,
        messages=[{"role": "user", "content": "What is 3 + 4?"}])
    trace = r.model_extra["conclave"]
    assert len(trace["agents"]) == 2, trace
    assert r.choices[0].message.content == trace["text"]


def test_models():
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids and "conclave/tiny" in ids, ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_errors():
    def raises(cls, fn):
        try:
            fn()
        except cls as e:
            return e
        raise AssertionError(f"{cls.__name__} not raised")

    e = raises(openai.NotFoundError, lambda: client.chat.completions.create(
        model="no-such-model", messages=QUESTION))
    assert e.body["code"] == "model_not_found", e.body
    e = raises(openai.BadRequestError, lambda: client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=5))
    assert e.body["param"] == "temperature", e.body
    e = raises(openai.BadRequestError, lambda: client.chat.completions.create(
        model=MODEL, messages=QUESTION, logprobs=True, top_logprobs=21))
    assert e.body["param"] == "top_logprobs", e.body
    raises(openai.BadRequestError, lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello " * 9000}], max_tokens=2))
    wrong = openai.OpenAI(base_url=URL, api_key="sk-wrong", max_retries=0)
    raises(openai.AuthenticationError, lambda: wrong.models.list())
    e = raises(openai.APIStatusError, lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x" * 300_000}]))
    assert e.status_code == 413, e


def test_rate_limit():
    busy = openai.OpenAI(base_url=BUSY_URL, api_key=KEY, max_retries=0, timeout=600)
    # Greedy, this runs past 200 tokens: it holds the only slot while the next one asks.
    stream = busy.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=200, stream=True,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}])
    it = iter(stream)
    next(it)
    e = None
    try:
        busy.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)
    except openai.RateLimitError as err:
        e = err
    assert e is not None, "RateLimitError not raised"
    assert e.response.headers["retry-after"] == "1"
    for _ in it:
        pass


def test_metrics_parse():
    req = urllib.request.Request(os.environ["CONCLAVE_METRICS_URL"],
                                 headers={"Authorization": f"Bearer {KEY}"})
    text = urllib.request.urlopen(req).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ["conclave_requests", "conclave_request_duration_seconds",
                 "conclave_completion_tokens", "conclave_queue_depth",
                 "conclave_decode_tokens_per_second", "conclave_jobs_cancelled"]:
        assert name in families, (name, sorted(families))
    assert families["conclave_request_duration_seconds"].type == "histogram"


def main():
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_")]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"ok   {name}")
        except Exception:
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"openai {openai.__version__}: {len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
