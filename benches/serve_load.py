"""The client side of benches/serve_load (run that script; it makes the venv this needs).

Drives `conclave serve` and `llama-server` with the same loopback workloads, one server at a
time, and writes the figures of both side by side. Every request is a streamed chat
completion at temperature 0, so that both servers, given the same GGUF, write about the same
tokens and so do the same work.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = ("chat", "stream", "burst")
SERVERS = ("conclave", "llama")


def parse_args():
    p = argparse.ArgumentParser(
        prog="benches/serve_load",
        description="conclave serve against llama-server on issue 28's workloads",
    )
    p.add_argument("results", type=Path, help="folder for summary.md, summary.json, logs")
    p.add_argument("--models", default="qwen2.5-coder-0.5b,smollm2-135m",
                   help="comma-separated catalog models (pulled), one after the other")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: conclave,llama")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: chat,stream,burst")
    p.add_argument("--threads", type=int, default=2, help="threads of each server")
    p.add_argument("--prefix-cache-mb", type=int, default=512,
                   help="conclave serve --prefix-cache-mb (llama-server keeps its --cache-prompt default of 8 GiB host cache)")
    p.add_argument("--turns", type=int, default=10, help="chat: turns")
    p.add_argument("--chat-tokens", type=int, default=48, help="chat: max tokens of each reply")
    p.add_argument("--streams", type=int, default=8, help="stream: concurrent streaming clients")
    p.add_argument("--stream-tokens", type=int, default=256, help="stream: tokens of each stream")
    p.add_argument("--long-tokens", type=int, default=2000, help="stream: tokens of the long prompt")
    p.add_argument("--clients", type=int, default=16, help="burst: concurrent clients")
    p.add_argument("--burst-tokens", type=int, default=128, help="burst: max tokens of each reply")
    p.add_argument("--limit", type=float, default=240,
                   help="seconds one workload may take on one server before it is abandoned")
    return p.parse_args()


# ---------------------------------------------------------------- commands and servers


class Log:
    """Every command run, printed as it runs and kept in commands.txt."""

    def __init__(self, results: Path):
        self.file = open(results / "commands.txt", "w")

    def command(self, env: dict, argv: list, tail: str = ""):
        """Logs `env argv tail`; `tail` is shell text written as is."""
        line = " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv])
        line += tail
        print(f"$ {line}", flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def run(log: Log, argv: list, last_from: Path | None = None) -> str:
    """Runs `argv`; with `last_from`, its last argument is that file's text and is logged as
    `"$(cat FILE)"`."""
    if last_from:
        log.command({}, argv[:-1], f' "$(cat {shlex.quote(str(last_from))})"')
    else:
        log.command({}, argv)
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{argv[0]} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_bin() -> Path:
    b = os.environ.get("LLAMA_CPP_BIN")
    if not b:
        sys.exit("set LLAMA_CPP_BIN to the folder with llama-server (see the header of benches/serve_load)")
    return Path(b)


def conclave_bin() -> str:
    return os.environ.get("CONCLAVE", str(REPO / "target/release/conclave"))


def server_command(server: str, model: str, gguf: str, port: int, slots: int, ctx_per_slot: int, a):
    """(env, argv) of one server; `slots` clients at once, each up to `ctx_per_slot` tokens."""
    if server == "conclave":
        env = {"RAYON_NUM_THREADS": str(a.threads)}
        argv = [conclave_bin(), "serve", "--port", str(port), "--models", model,
                "--prefix-cache-mb", str(a.prefix_cache_mb)]
        return env, argv
    b = llama_bin()
    env = {"LD_LIBRARY_PATH": str(b)}
    # -c is shared out between the -np slots; --cache-prompt is llama-server's default
    # (tools/server, common.h `cache_prompt = true`) but is named so the run says so.
    argv = [str(b / "llama-server"), "-m", gguf, "--host", "127.0.0.1", "--port", str(port),
            "-t", str(a.threads), "-tb", str(a.threads), "-np", str(slots),
            "-c", str(slots * ctx_per_slot), "--cache-prompt", "--no-ui"]
    return env, argv


class Server:
    def __init__(self, log: Log, env: dict, argv: list, logfile: Path, port: int):
        log.command(env, argv)
        self.url = f"http://127.0.0.1:{port}"
        self.out = open(logfile, "w")
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    async def ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.out.name}")
                try:
                    if (await c.get(self.url + "/health", timeout=2)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout} s; see {self.out.name}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


# ---------------------------------------------------------------- one request

# Every reply of the workload running, written next to its server's log so that the two
# servers' texts can be compared.
REPLIES = []


async def chat(client: httpx.AsyncClient, url: str, model: str, messages: list, max_tokens: int,
               times: list | None = None):
    """One streamed chat completion: when it was sent, when each text piece came (appended to
    `times` as they come, for a caller watching its progress), the text and the usage
    (prompt, cached and completion tokens)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "seed": 1, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    times = [] if times is None else times
    text, usage = [], None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    times.append(time.perf_counter())
                    text.append(piece)
    usage = usage or {}
    REPLIES.append({"prompt": messages[-1]["content"][:80], "text": "".join(text)})
    return {
        "sent": sent,
        "times": times,
        "text": "".join(text),
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
        "completion_tokens": usage.get("completion_tokens", len(times)),
    }


def ttft(r) -> float | None:
    return r["times"][0] - r["sent"] if r["times"] else None


def percentile(xs: list, q: float) -> float | None:
    """Linear interpolation between the two nearest ranks (numpy's default)."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    i = int(k)
    j = min(i + 1, len(xs) - 1)
    return xs[i] + (xs[j] - xs[i]) * (k - i)


def ms(x):
    return None if x is None else round(1000 * x, 1)


# ---------------------------------------------------------------- prompts

SYSTEM = (
    "You are a careful senior Python engineer helping a colleague build a small command-line "
    "tool that reads CSV files of sensor readings, cleans them, and writes daily summaries. "
    "Answer briefly and concretely: short code when code is asked for, one or two sentences "
    "otherwise. Keep names plain, handle missing values explicitly, and prefer the standard "
    "library. The readings have the columns timestamp (ISO 8601), sensor_id, temperature_c "
    "and humidity_pct; some rows have empty fields and some timestamps repeat."
)

CHAT_TURNS = [
    "How should I read the CSV file so that empty fields become None?",
    "Now parse the timestamp column into datetime objects.",
    "How do I drop rows whose timestamp repeats, keeping the first?",
    "Group the readings by sensor and by calendar day.",
    "Compute the mean temperature of each group, ignoring missing values.",
    "Also the minimum and maximum humidity of each group.",
    "Write the summaries to a new CSV file with a header row.",
    "Add a command-line interface with argparse for the input and output paths.",
    "How would I test the grouping function with pytest?",
    "Finally, what should the README say about running the tool?",
]

TOPICS = ["rivers", "castles", "volcanoes", "libraries", "harbours", "deserts", "orchards",
          "observatories", "bridges", "glaciers", "markets", "lighthouses", "forests",
          "railways", "islands", "caves"]


# Asked for more than their token limit, both models write until it (at temperature 0, on
# both servers), so every stream is as long as the others.
def stream_prompt(i: int) -> str:
    return f"Write a long story about {TOPICS[i % len(TOPICS)]}, at least 600 words."


def burst_prompt(i: int) -> str:
    return f"Describe {TOPICS[-1 - i % len(TOPICS)]} in detail, in at least 300 words."


def long_document(n: int, seed: int = 28) -> str:
    """`n` sentences of made-up reports, different from anything sent before."""
    rng = random.Random(seed)
    adj = ["red", "quiet", "northern", "broken", "heavy", "small", "old", "bright"]
    noun = ["pump", "valve", "sensor", "gate", "crane", "boiler", "relay", "fan"]
    place = ["dock 4", "the east hall", "line B", "the cold store", "yard 2", "the roof"]
    verb = ["reported", "logged", "measured", "lost", "recovered", "exceeded"]
    unit = ["litres", "volts", "kilograms", "degrees", "metres", "hours"]
    return " ".join(
        f"Report {k}: the {rng.choice(adj)} {rng.choice(noun)} in {rng.choice(place)} "
        f"{rng.choice(verb)} {rng.randint(2, 9999)} {rng.choice(unit)}."
        for k in range(1, n + 1)
    )


def long_prompt(log: Log, model: str, tokens: int, results: Path) -> str:
    """A question after a document of about `tokens` tokens in `model`'s tokenizer, saved
    in `results`."""
    question = "\n\nWhich report has the largest number? Answer with the report number only."
    def count(text, name):
        path = results / f"{name}-{model}.txt"
        path.write_text(text)
        argv = [conclave_bin(), "tokenize", "--model", model]
        return len(json.loads(run(log, argv + [text], path)))

    n = 50
    n = max(1, round(n * tokens / count(long_document(n) + question, "long-prompt-probe")))
    text = long_document(n) + question
    print(f"  long prompt: {count(text, 'long-prompt')} tokens", flush=True)
    return text


# ---------------------------------------------------------------- workloads


async def warm_up(client, url, model):
    """A first request unlike the workloads', so that weights are paged in before timing."""
    await chat(client, url, model, [{"role": "user", "content": "Say hello."}], 4)


async def chat_workload(client, url, model, a, _long, out):
    messages = [{"role": "system", "content": SYSTEM}]
    # Filled turn by turn, so that a chat over the time limit keeps the turns it made.
    turns = out["turns"] = []
    for k in range(a.turns):
        messages.append({"role": "user", "content": CHAT_TURNS[k % len(CHAT_TURNS)]})
        r = await chat(client, url, model, messages, a.chat_tokens)
        messages.append({"role": "assistant", "content": r["text"]})
        turns.append({"turn": k + 1, "ttft_ms": ms(ttft(r)), "prompt_tokens": r["prompt_tokens"],
                      "cached_tokens": r["cached_tokens"], "completion_tokens": r["completion_tokens"]})
    first, last = turns[0]["ttft_ms"], turns[-1]["ttft_ms"]
    out.update(ttft_first_ms=first, ttft_last_ms=last, ratio=round(last / first, 2) if first and last else None)


def gaps(results: list, window=None) -> list:
    """Inter-token gaps of all streams (after each one's first token); with `window` (t0, t1),
    only the gaps that overlap it."""
    out = []
    for r in results:
        for t0, t1 in zip(r["times"], r["times"][1:]):
            if window is None or (t1 > window[0] and t0 < window[1]):
                out.append(t1 - t0)
    return out


def itl(g: list) -> dict:
    return {"n": len(g), "p50_ms": ms(percentile(g, 0.5)), "p99_ms": ms(percentile(g, 0.99)),
            "max_ms": ms(max(g) if g else None)}


async def stream_workload(client, url, model, a, long_text, out):
    def streams(progress):
        return [asyncio.create_task(chat(client, url, model, [{"role": "user", "content": stream_prompt(i)}],
                                         a.stream_tokens, times))
                for i, times in enumerate(progress)]

    alone = await asyncio.gather(*streams([[] for _ in range(a.streams)]))
    out["without_long"] = itl(gaps(alone))
    # The same streams again; once each has written a few tokens the long prompt arrives.
    progress = [[] for _ in range(a.streams)]
    tasks = streams(progress)
    while any(len(p) < 8 and not t.done() for p, t in zip(progress, tasks)):
        await asyncio.sleep(0.02)
    long = await chat(client, url, model, [{"role": "user", "content": long_text}], 16)
    shared = await asyncio.gather(*tasks)
    window = (long["sent"], long["times"][0] if long["times"] else long["sent"])
    without, with_long = out["without_long"], itl(gaps(shared))
    out.update({
        "with_long": with_long,
        "during_long_prefill": itl(gaps(shared, window)),
        "p99_ratio": round(with_long["p99_ms"] / without["p99_ms"], 2)
        if with_long["p99_ms"] and without["p99_ms"] else None,
        "long_prompt_tokens": long["prompt_tokens"],
        "long_ttft_ms": ms(ttft(long)),
        "stream_tokens": [r["completion_tokens"] for r in shared],
    })


async def burst_workload(client, url, model, a, _long, out):
    start = time.perf_counter()
    rs = await asyncio.gather(*[
        chat(client, url, model, [{"role": "user", "content": burst_prompt(i)}], a.burst_tokens)
        for i in range(a.clients)])
    wall = time.perf_counter() - start
    tokens = sum(r["completion_tokens"] for r in rs)
    out.update(clients=a.clients, completion_tokens=tokens, wall_s=round(wall, 2),
               tokens_per_s=round(tokens / wall, 1),
               ttft_p50_ms=ms(percentile([ttft(r) for r in rs if r["times"]], 0.5)))


# Clients at once of each workload (llama-server's -np) and tokens each may hold.
def shape(workload: str, a) -> tuple:
    if workload == "chat":
        return 1, 4096
    if workload == "stream":
        return a.streams + 1, a.long_tokens + 512
    return a.clients, 1024


RUN = {"chat": chat_workload, "stream": stream_workload, "burst": burst_workload}


async def one(log, a, model, gguf, server, workload, long_text):
    slots, ctx = shape(workload, a)
    port = free_port()
    env, argv = server_command(server, model, gguf, port, slots, ctx, a)
    s = Server(log, env, argv, a.results / f"{model}-{server}-{workload}.log", port)
    started = time.perf_counter()
    REPLIES.clear()
    out = {}
    try:
        await s.ready()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=a.limit, limits=limits) as client:
            await warm_up(client, s.url, model)
            await asyncio.wait_for(RUN[workload](client, s.url, model, a, long_text, out), a.limit)
    except asyncio.TimeoutError:
        out["error"] = f"timed out after {a.limit} s"
    except Exception as e:  # one failed workload is recorded; the others still run
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        s.stop()
        with open(a.results / f"{model}-{server}-{workload}.replies.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in REPLIES)
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(f"  {model} {server} {workload}: {json.dumps(out)[:400]}", flush=True)
    return out


# ---------------------------------------------------------------- report


def fmt(x):
    return "–" if x is None else str(x)


def markdown(results: dict, meta: dict) -> str:
    lines = [f"# serve_load {meta['date']}", "",
             f"conclave {meta['conclave']}, llama-server {meta['llama_server']}; "
             f"{meta['cpu']}, {meta['cores']} cores; {meta['threads']} threads each.", ""]
    for model, by_server in results.items():
        lines += [f"## {model}", ""]
        chat_rows = [(s, r["chat"]) for s, r in by_server.items() if "chat" in r]
        if chat_rows:
            n = max(len(c.get("turns", [])) for _, c in chat_rows)
            lines += ["Chat: time to first token (ms) of each turn (its prompt tokens, cached ones):", "",
                      "| server | " + " | ".join(f"turn {k}" for k in range(1, n + 1)) + " | last / first |",
                      "|---|" + "---|" * (n + 1)]
            for s, c in chat_rows:
                cells = [f"{t['ttft_ms']} ({t['prompt_tokens']}, {fmt(t['cached_tokens'])})" for t in c.get("turns", [])]
                cells += ["–"] * (n - len(cells))
                lines.append(f"| {s} | " + " | ".join(cells) + f" | {c.get('error') or fmt(c.get('ratio'))} |")
            lines.append("")
        stream_rows = [(s, r["stream"]) for s, r in by_server.items() if "stream" in r]
        if stream_rows:
            lines += ["Streams: inter-token latency (ms) of the streaming clients, p50 / p99 / max; "
                      "'during' counts only the gaps that overlap the long prompt's prefill:", "",
                      "| server | without long prompt | with it | p99 with / without | during its prefill | long prompt tokens, TTFT (ms) | tokens per stream |",
                      "|---|---|---|---|---|---|---|"]
            for s, c in stream_rows:
                trio = lambda d: f"{fmt(d['p50_ms'])} / {fmt(d['p99_ms'])} / {fmt(d['max_ms'])}"
                if "with_long" not in c:
                    alone = trio(c["without_long"]) if "without_long" in c else "–"
                    lines.append(f"| {s} | {alone} | {c.get('error')} | | | | |")
                    continue
                toks = c["stream_tokens"]
                lines.append(f"| {s} | {trio(c['without_long'])} | {trio(c['with_long'])} | {fmt(c['p99_ratio'])} "
                             f"| {trio(c['during_long_prefill'])} | {c['long_prompt_tokens']}, {c['long_ttft_ms']} "
                             f"| {min(toks)}–{max(toks)} |")
            lines.append("")
        burst_rows = [(s, r["burst"]) for s, r in by_server.items() if "burst" in r]
        if burst_rows:
            lines += ["Burst of concurrent clients with short prompts:", "",
                      "| server | clients | completion tokens | wall (s) | tokens/s | TTFT p50 (ms) |",
                      "|---|---|---|---|---|---|"]
            for s, c in burst_rows:
                if "tokens_per_s" not in c:
                    lines.append(f"| {s} | {c.get('error')} | | | | |")
                    continue
                lines.append(f"| {s} | {c['clients']} | {c['completion_tokens']} | {c['wall_s']} "
                             f"| {c['tokens_per_s']} | {fmt(c['ttft_p50_ms'])} |")
            lines.append("")
    lines += ["Commands: commands.txt.", ""]
    return "\n".join(lines)


def main():
    a = parse_args()
    a.results.mkdir(parents=True, exist_ok=True)
    log = Log(a.results)
    models = a.models.split(",")
    servers = a.servers.split(",")
    workloads = a.workloads.split(",")
    for s in servers:
        if s not in SERVERS:
            sys.exit(f"unknown server {s!r}: use {', '.join(SERVERS)}")
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w!r}: use {', '.join(WORKLOADS)}")
    version = "not run"
    if "llama" in servers:
        b = llama_bin()
        out = subprocess.run([str(b / "llama-server"), "--version"], env={**os.environ, "LD_LIBRARY_PATH": str(b)},
                             capture_output=True, text=True)
        version = (out.stdout + out.stderr).strip().splitlines()[0] if out.returncode == 0 else "unknown"
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "conclave": commit,
            "llama_server": version, "cpu": cpu, "cores": os.cpu_count(), "threads": a.threads,
            "args": {k: str(v) for k, v in vars(a).items()}}
    results = {}
    for model in models:
        gguf = run(log, [conclave_bin(), "models", "path", model]).strip()
        long_text = long_prompt(log, model, a.long_tokens, a.results) if "stream" in workloads else None
        results[model] = {s: {} for s in servers}
        # Workload by workload, the servers taking turns, so both see the machine of the same minutes.
        for w in workloads:
            for s in servers:
                results[model][s][w] = asyncio.run(one(log, a, model, gguf, s, w, long_text))
        (a.results / "summary.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        (a.results / "summary.md").write_text(markdown(results, meta))
    print(f"\n{(a.results / 'summary.md').read_text()}")


if __name__ == "__main__":
    main()
