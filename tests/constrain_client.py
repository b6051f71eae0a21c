"""Structured output through the official `openai` Python package against `conclave serve`.

Run by tests/constrain.rs (`json_schema_strict_holds_for_100_prompts_with_the_openai_client`),
which starts a server serving qwen2.5-coder-0.5b, sets CONCLAVE_URL and uses the Python of the
test virtual environment (tests/common/mod.rs, `python_with_openai`), where `openai` and
`jsonschema` are installed.

100 varied prompts, sent concurrently so that the server batches them, each asking for a
`json_schema` strict answer; every answer must parse and validate against the schema.
"""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

try:
    import jsonschema
    import openai
except ImportError as e:
    sys.exit(f"{e}: run this through `cargo test --release --test constrain`, which makes a "
             "virtual environment with openai and jsonschema under target/tmp")

URL = os.environ["CONCLAVE_URL"]
MODEL = "qwen2.5-coder-0.5b"
client = openai.OpenAI(base_url=URL, api_key="none", max_retries=0, timeout=1200)

# Every string and list is bounded, so that a whole answer fits in max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "kind": {"enum": ["person", "place", "thing", "idea", "animal"]},
        "year": {"type": "integer", "minimum": -3000, "maximum": 2100},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20},
                 "minItems": 1, "maxItems": 3},
        "famous": {"type": "boolean"},
    },
    "required": ["name", "kind", "year", "tags", "famous"],
    "additionalProperties": False,
}

SUBJECTS = [
    "Ada Lovelace", "the Eiffel Tower", "the printing press", "democracy", "the blue whale",
    "Marie Curie", "Mount Everest", "the telephone", "zero", "the honeybee",
    "Leonardo da Vinci", "the Great Wall of China", "the steam engine", "gravity", "the octopus",
    "Nelson Mandela", "the Amazon river", "the compass", "free speech", "the elephant",
    "Alan Turing", "Venice", "the bicycle", "the scientific method", "the tiger",
]
TEMPLATES = [
    "Describe {} as a JSON record.",
    "Give me facts about {} in JSON.",
    "Fill in a catalogue entry for {}.",
    "What do you know about {}? Answer with a JSON object.",
]
PROMPTS = [t.format(s) for t in TEMPLATES for s in SUBJECTS]
assert len(PROMPTS) == 100 and len(set(PROMPTS)) == 100


def ask(i):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPTS[i]}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "entry", "schema": SCHEMA, "strict": True}},
        max_tokens=300,
        seed=i,
    )
    return r.choices[0]


def main():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    with ThreadPoolExecutor(max_workers=32) as pool:
        choices = list(pool.map(ask, range(len(PROMPTS))))
    bad = []
    for prompt, c in zip(PROMPTS, choices):
        try:
            jsonschema.validate(json.loads(c.message.content), SCHEMA)
            assert c.finish_reason == "stop", c.finish_reason
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            bad.append(f"{prompt!r}: {type(e).__name__}: {e}: {c.message.content!r}")
    print(f"{len(PROMPTS) - len(bad)} of {len(PROMPTS)} validate")
    print("example:", choices[0].message.content)
    for b in bad:
        print(b)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
