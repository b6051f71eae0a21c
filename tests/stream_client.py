"""The official openai client against a streamed ensemble without Conclave's `events` opt-in:
every event it reads is a chunk of the answer, and the answer is the non-streamed one.

Run by tests/stream.rs with CONCLAVE_URL, CONCLAVE_KEY and CONCLAVE_MODEL set.
"""
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["CONCLAVE_URL"] + "/v1", api_key=os.environ["CONCLAVE_KEY"])
model = os.environ["CONCLAVE_MODEL"]
args = dict(
    model=model,
    messages=[{"role": "user", "content": "What is 12 + 30?"}],
    max_tokens=48,
    seed=7,
)

whole = client.chat.completions.create(**args)
want = whole.choices[0].message.content
trace_id = whole.model_extra["conclave"]["trace_id"]
assert trace_id == whole.id, (trace_id, whole.id)

text = ""
chunks = 0
finished = None
for chunk in client.chat.completions.create(stream=True, **args):
    # Anything but the answer's chunks (an event's data read as a chunk) fails here.
    assert chunk.object == "chat.completion.chunk", chunk
    assert chunk.model == model, chunk
    assert len(chunk.choices) == 1, chunk
    chunks += 1
    delta = chunk.choices[0].delta
    text += delta.content or ""
    if chunk.choices[0].finish_reason:
        finished = chunk.choices[0].finish_reason
        assert chunk.model_extra["conclave"]["trace_id"] == chunk.id, chunk.model_extra
assert text == want, (text, want)
assert finished == "stop", finished
print(f"openai client: {chunks} chunks, the answer as without streaming: {want!r}")
