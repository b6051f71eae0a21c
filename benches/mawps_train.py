#!/usr/bin/env python3
"""Writes the MAWPS + ASDiv-A train set as `conclave bench --task gsm8k` reads it.

Input: `data/mawps-asdiv-a_svamp/train.csv` of the SVAMP repository (arkilpatel/SVAMP),
the training set SVAMP's authors use. Its questions have `numberK` slots filled from the
`Numbers` column; the spaces its tokenizer put before punctuation are removed; answers are
written `#### N`. Questions whose answers have more than two decimals (repeating fractions no
reply writes the same way) are left out. Usage: mawps_train.py train.csv > mawps-train.jsonl
(`head -200` of it is benches/results' mawps-train200.jsonl).
"""
import csv
import json
import re
import sys


def number(x):
    f = float(x)
    return str(int(f)) if f == int(f) else repr(f)


for row in csv.DictReader(open(sys.argv[1])):
    nums = row["Numbers"].split()
    q = re.sub(r"number(\d+)", lambda m: number(nums[int(m.group(1))]), row["Question"])
    q = re.sub(r" ([.,?!])", r"\1", q).strip()
    a = number(row["Answer"])
    if "." in a and len(a.split(".")[1]) > 2:
        continue
    print(json.dumps({"question": q, "answer": "#### " + a}))
