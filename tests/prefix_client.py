"""The official `openai` Python package reads the prefix cache's usage from `conclave serve`.

Run by tests/prefix.rs (`the_server_reports_cached_prompt_tokens`), which starts the server
and sets CONCLAVE_URL, with the Python of the virtual environment tests/common/mod.rs makes.
"""
import os

import openai

client = openai.OpenAI(base_url=os.environ["CONCLAVE_URL"], api_key="none", max_retries=0,
                       timeout=600)
MODEL = "smollm2-135m"
chat = [{"role": "system", "content": "You are a helpful assistant who answers briefly."},
        {"role": "user", "content": "What is the capital of France?"}]

first = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=8, temperature=0)
assert first.usage.prompt_tokens_details.cached_tokens == 0, first.usage

chat += [{"role": "assistant", "content": first.choices[0].message.content},
         {"role": "user", "content": "And of Italy?"}]
second = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=8, temperature=0)
cached = second.usage.prompt_tokens_details.cached_tokens
# Turn 1's prompt and reply were kept: only the new user turn is prefilled (the template may
# end the reply with other tokens than were sampled: a few).
turn1 = first.usage.prompt_tokens + first.usage.completion_tokens
assert turn1 - 4 <= cached < second.usage.prompt_tokens, (first.usage, second.usage)

chat += [{"role": "assistant", "content": second.choices[0].message.content},
         {"role": "user", "content": "And of Spain?"}]
stream = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=8, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
usage = [c.usage for c in stream if c.usage is not None][-1]
turn2 = second.usage.prompt_tokens + second.usage.completion_tokens
assert usage.prompt_tokens_details.cached_tokens >= turn2 - 4, (second.usage, usage)
print(f"cached prompt tokens reported: {cached}, then {usage.prompt_tokens_details.cached_tokens}")
