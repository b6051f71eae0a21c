"""Drives the /ui page in headless Chromium for tests/ui.rs.

It enters the API key when the page asks for it, asks conclave/vote8 a sum, and checks that
the 8 agent columns fill while the agents stream (before the vote is shown), then the vote
table and exactly one highlighted winner whose answer is the API's trace's; saves a
screenshot; then opens the same trace from the recent-traces list and as a file, and checks
that both draw the same columns; last, a plain model streams into one column.

Environment: BASE (the server's URL), KEY (its API key), CHROMIUM (the browser to drive),
SHOT (where the screenshot goes).
"""
import json
import os
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright

BASE, KEY, CHROMIUM, SHOT = (os.environ[k] for k in ("BASE", "KEY", "CHROMIUM", "SHOT"))
QUESTION = "What is 17 + 25?"
# No sandbox (tests may run as root), and nothing that reaches out of the machine.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# The top ensemble's box, its agent columns, its vote table.
TOP = "#view > div > details.ensemble"
STATE_JS = """(top) => {
  const cols = [...document.querySelectorAll(top + ' > .columns > article.agent')];
  return {
    texts: cols.map(c => c.querySelector('.text').textContent),
    winners: cols.flatMap((c, i) => c.classList.contains('winner') ? [i] : []),
    extracted: cols.map(c => (c.querySelector('.done .extracted') || {}).textContent ?? null),
    votes: !!document.querySelector(top + ' > .tail table.votes'),
    winner_rows: [...document.querySelectorAll(top + ' > .tail tr.winner td:first-child')].map(td => td.textContent),
    status: document.getElementById('status').textContent,
    failed: document.getElementById('status').classList.contains('error'),
  };
}"""


def api(path):
    req = urllib.request.Request(BASE + path, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def state(page):
    return page.evaluate(STATE_JS, TOP)


def check_drawn(s, trace, how):
    """The page shows `trace`: its agents' texts in 8 columns, its one winner."""
    texts = [a["text"] for a in trace["agents"]]
    assert s["texts"] == texts, f"{how}: the columns are not the trace's agents: {s['texts']!r}"
    assert s["winners"] == [trace["winner"]], f"{how}: highlighted {s['winners']}, trace's winner {trace['winner']}"
    assert s["extracted"][trace["winner"]] == trace["answer"], f"{how}: {s['extracted']} vs {trace['answer']!r}"
    assert s["winner_rows"] == [trace["answer"]], f"{how}: winning vote rows {s['winner_rows']}"


with sync_playwright() as p:
    ctx = p.chromium.launch_persistent_context(
        tempfile.mkdtemp(prefix="conclave-ui-"), executable_path=CHROMIUM, headless=True,
        args=FLAGS, viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.on("pageerror", lambda e: print("page error:", e))
    page.goto(BASE + "/ui")

    # The page's first data call is refused without the key: it asks for it.
    page.get_by_role("textbox", name="API key").fill(KEY)
    page.get_by_role("button", name="Save").click()
    page.get_by_label("Model").select_option("conclave/vote8")
    page.get_by_label("Question").fill(QUESTION)
    page.get_by_role("button", name="Ask").click()

    start = time.monotonic()
    first_text = all_filled = vote_shown = None
    grew = False  # a column's text grew between two looks before the vote: it streamed
    last = None
    while time.monotonic() - start < 600:
        s = state(page)
        assert not s["failed"], f"the page says: {s['status']}"
        now = time.monotonic() - start
        filled = sum(1 for t in s["texts"] if t.strip())
        if s["votes"]:
            vote_shown = now
            break
        if filled and first_text is None:
            first_text = now
        if filled == 8 and all_filled is None:
            all_filled = now
        if last and any(len(b) > len(a) > 0 for a, b in zip(last, s["texts"])):
            grew = True
        last = s["texts"]
        time.sleep(0.2)
    print(f"first text {first_text} s, 8 columns with text {all_filled} s, vote {vote_shown} s")
    assert vote_shown is not None, "no vote table within 600 s"
    assert all_filled is not None, "8 columns never all had text before the vote"
    assert first_text < vote_shown and grew, "the columns did not fill while the agents streamed"

    page.wait_for_function("() => document.getElementById('status').textContent.includes('answered')")
    s = state(page)
    items = api("/v1/conclave/traces")["data"]
    assert items and items[0]["model"] == "conclave/vote8", items
    stored = api(f"/v1/conclave/traces/{items[0]['id']}")
    trace = stored["trace"]
    assert len(trace["agents"]) == 8 and trace["winner"] is not None, trace
    check_drawn(s, trace, "the live answer")
    os.makedirs(os.path.dirname(SHOT), exist_ok=True)
    page.screenshot(path=SHOT, full_page=True)

    # The same trace from the side list, and from a file.
    page.get_by_role("button", name=QUESTION).first.click()
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('trace ')")
    check_drawn(state(page), trace, "the recent trace")
    page.get_by_role("button", name="Ask").focus()  # leave the list
    path = os.path.join(tempfile.mkdtemp(), "vote8-trace.json")
    with open(path, "w") as f:
        json.dump(stored, f)
    page.evaluate("document.getElementById('view').replaceChildren()")
    page.get_by_label("Load a trace file").set_input_files(path)
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('trace file')")
    check_drawn(state(page), trace, "the trace file")

    # A plain model streams into one column, with no vote.
    page.get_by_label("Model").select_option("qwen2.5-coder-0.5b")
    page.get_by_label("Question").fill("Say hello in one word.")
    page.get_by_role("button", name="Ask").click()
    page.wait_for_function("() => document.getElementById('status').textContent.includes('answered')")
    s = state(page)
    assert len(s["texts"]) == 1 and s["texts"][0].strip() and not s["votes"], s
    ctx.close()
print(f"ui ok: winner #{trace['winner'] + 1} answered {trace['answer']}")
