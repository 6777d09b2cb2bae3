"""Writes the prompt sets of the real-model study and checks them against the model with HF transformers.

    .venv/bin/python scripts/make_real_prompts.py [GGUF] [OUT_DIR]

defaults: models/real/SmolLM2-135M-Instruct.Q4_1.gguf, prompts/smollm2-135m. Writes

- ioi.jsonl: IOI pairs (5 templates x ABBA/BABA, ABC corruption: the second mention of the subject is
  replaced by a third name), single-token names, objects and places, in a shuffled order so that any
  prefix mixes the templates;
- facts.jsonl: causal-tracing prompts (capitals, landmarks, languages, companies) that the model
  completes with the answer as its top-1 token; the candidates it gets wrong are listed in CHECK.md,
  not written;
- greater_than.jsonl: "The war lasted from the year 17YY to the year 17" pairs (01 corruption);
- CHECK.md: accuracy and logit difference per template and per relation, as this model gives them.

The model is read by HF's own GGUF loader (transformers 5.23, gguf 0.19), not by this toolkit.
"""

import json
import random
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = Path(sys.argv[1] if len(sys.argv) > 1 else "models/real/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "prompts/smollm2-135m")

NAMES = ["Mary", "John", "Tom", "James", "Sarah", "Anna", "David", "Emma", "Paul", "Kate", "Michael", "Lisa",
         "Mark", "Laura", "Peter", "Jessica", "Daniel", "Rachel", "Steve", "Alice", "Bob", "Jane", "Jack", "Susan"]
PLACES = ["store", "park", "school", "beach", "office", "station", "market", "hospital", "library", "restaurant"]
OBJECTS = ["drink", "book", "ball", "gift", "letter", "key", "bag", "ring", "phone", "ticket"]
TEMPLATES = [
    "When {A} and {B} went to the {P}, {S} gave a {O} to",
    "Then, {A} and {B} went to the {P}. {S} gave a {O} to",
    "After {A} and {B} arrived at the {P}, {S} handed the {O} to",
    "While {A} and {B} were working at the {P}, {S} passed a {O} to",
    "Yesterday {A} and {B} met at the {P}, and {S} sent a {O} to",
]
PER_CELL = 8  # pairs per template and order

# (relation, prompt, subject, answer)
FACTS = [
    *[("capital", f"The capital of {c} is", c, f" {a}") for c, a in [
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
        ("Russia", "Moscow"), ("England", "London"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Greece", "Athens"),
        ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Poland", "Warsaw"),
        ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Kenya", "Nairobi"), ("Thailand", "Bangkok"), ("Peru", "Lima"),
        ("Sweden", "Stockholm"), ("Cuba", "Havana"), ("Hungary", "Budapest"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
        ("Argentina", "Buenos"), ("India", "New"), ("Turkey", "Ankara"), ("Belgium", "Brussels"), ("Iran", "Tehran")]],
    *[("landmark", f"The {s} is located in the city of", s, f" {a}") for s, a in [
        ("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Statue of Liberty", "New"), ("Big Ben", "London"),
        ("Brandenburg Gate", "Berlin"), ("Golden Gate Bridge", "San"), ("Kremlin", "Moscow"), ("Sagrada Familia", "Barcelona"),
        ("Leaning Tower of Pisa", "P"), ("Acropolis", "Athens"), ("Space Needle", "Seattle"), ("Louvre", "Paris"),
        ("Sydney Opera House", "Sydney"), ("Tower of London", "London"), ("Vatican", "Rome")]],
    *[("language", f"The official language of {c} is", c, f" {a}") for c, a in [
        ("France", "French"), ("Germany", "German"), ("Spain", "Spanish"), ("Italy", "Italian"), ("Brazil", "Portuguese"),
        ("Japan", "Japanese"), ("Russia", "Russian"), ("China", "Mandarin"), ("Mexico", "Spanish"), ("Portugal", "Portuguese"),
        ("Greece", "Greek"), ("Poland", "Polish"), ("Sweden", "Swedish"), ("Turkey", "Turkish"), ("Argentina", "Spanish")]],
    *[("company", p, s, f" {a}") for p, s, a in [
        ("The iPhone is made by the company", "iPhone", "Apple"), ("Windows is an operating system made by", "Windows", "Microsoft"),
        ("The Model S is an electric car made by", "Model S", "Tesla"), ("The PlayStation is a game console made by", "PlayStation", "Sony"),
        ("The Galaxy phones are made by", "Galaxy", "Samsung"), ("The Corolla is a car made by", "Corolla", "Toyota"),
        ("The Xbox is a game console made by", "Xbox", "Microsoft"), ("The Big Mac is sold by", "Big Mac", "McDonald"),
        ("Android is an operating system developed by", "Android", "Google"), ("The Mustang is a car made by", "Mustang", "Ford"),
        ("The Kindle is an e-reader sold by", "Kindle", "Amazon"), ("The Boeing 747 is an airplane made by", "Boeing 747", "Boeing"),
        ("The MacBook is a laptop made by", "MacBook", "Apple"), ("The Civic is a car made by", "Civic", "Honda"),
        ("The Switch is a game console made by", "Switch", "Nintendo")]],
]


def single(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def main():
    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32).eval()
    # BOS first whenever the tokenizer has one, as this toolkit's prompt files are read (and as
    # TransformerLens prepends it by default), whatever HF's add_bos_token says.
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []

    def last_logits(text):
        ids = bos + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0, -1]

    OUT.mkdir(parents=True, exist_ok=True)
    report = [f"# Prompt sets for {GGUF.name}", "", "Made and checked by `scripts/make_real_prompts.py` with HF transformers' "
              "own GGUF loader (float32), each prompt with the BOS token first (as `interp` reads prompt files). Logit difference = "
              "logit(answer) - logit(wrong) at the last token.", ""]

    # IOI
    names = [n for n in NAMES if single(tok, " " + n) is not None]
    dropped = [n for n in NAMES if n not in names]
    for words in (PLACES, OBJECTS):
        assert all(single(tok, " " + w) is not None for w in words), words
    rng = random.Random(0)
    pairs = []
    for t, template in enumerate(TEMPLATES):
        for order in ("ABBA", "BABA"):
            for _ in range(PER_CELL):
                a, b, c = rng.sample(names, 3)
                place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
                first, second = (a, b) if order == "ABBA" else (b, a)
                clean = template.format(A=first, B=second, S=b, P=place, O=obj)
                corrupted = template.format(A=first, B=second, S=c, P=place, O=obj)
                pairs.append({"clean": clean, "corrupted": corrupted, "answer": " " + a, "wrong": " " + b, "label": f"t{t}-{order}"})
    rng.shuffle(pairs)
    report += ["## IOI", "", f"{len(pairs)} pairs: {len(TEMPLATES)} templates x ABBA/BABA x {PER_CELL}; corrupted = the second "
               f"mention of the subject replaced by a third name (ABC). Single-token names: {len(names)} of {len(NAMES)}"
               + (f" (not single tokens: {', '.join(dropped)})" if dropped else "") + ".", "",
               "| template | pairs | accuracy (answer over wrong) | mean logit diff | corrupted mean logit diff |", "|---|---|---|---|---|"]
    stats = {}
    for p in pairs:
        ans, wrong = single(tok, p["answer"]), single(tok, p["wrong"])
        lc, lx = last_logits(p["clean"]), last_logits(p["corrupted"])
        assert len(tok(p["clean"], add_special_tokens=False)["input_ids"]) == len(tok(p["corrupted"], add_special_tokens=False)["input_ids"])
        d, dx = (lc[ans] - lc[wrong]).item(), (lx[ans] - lx[wrong]).item()
        p["logit_diff"] = d
        stats.setdefault(p["label"], []).append((d, dx))
    for label in sorted(stats):
        v = stats[label]
        report.append(f"| {label} | {len(v)} | {sum(d > 0 for d, _ in v) / len(v):.2f} | {sum(d for d, _ in v) / len(v):.2f} | "
                      f"{sum(x for _, x in v) / len(v):.2f} |")
    alld = [d for v in stats.values() for d, _ in v]
    report += ["", f"All: accuracy {sum(d > 0 for d in alld) / len(alld):.3f}, mean logit diff {sum(alld) / len(alld):.3f}.", ""]
    with open(OUT / "ioi.jsonl", "w") as f:
        for p in pairs:
            f.write(json.dumps({k: p[k] for k in ("clean", "corrupted", "answer", "wrong", "label")}) + "\n")

    # Facts
    report += ["## Facts", "", "Kept: the prompts whose top-1 next token is the answer's first token (the `answer` written).", "",
               "| relation | candidates | kept | mean P(answer) of kept |", "|---|---|---|---|"]
    kept, wrong_facts, per = [], [], {}
    for rel, prompt, subject, answer in FACTS:
        # The answer's first token (ROME's convention for multi-token answers).
        a = tok(answer, add_special_tokens=False)["input_ids"][0]
        answer = tok.decode([a])
        logits = last_logits(prompt)
        top = int(logits.argmax())
        ok = top == a
        per.setdefault(rel, [0, []])[0] += 1
        if ok:
            per[rel][1].append(torch.softmax(logits, -1)[a].item())
            kept.append({"prompt": prompt, "subject": subject, "answer": answer, "label": rel})
        else:
            wrong_facts.append(f"{prompt!r} -> {tok.decode([top])!r} (expected {answer!r})")
    for rel, (n, ps) in per.items():
        report.append(f"| {rel} | {n} | {len(ps)} | {sum(ps) / max(len(ps), 1):.3f} |")
    report += ["", f"Kept {len(kept)} of {len(FACTS)}. Not kept (the model's top-1 token instead):", ""]
    report += [f"- {w}" for w in wrong_facts] + [""]
    with open(OUT / "facts.jsonl", "w") as f:
        for k in kept:
            f.write(json.dumps(k) + "\n")

    # Greater-than
    gt, years = [], list(range(20, 99))
    rng2 = random.Random(1)
    for yy in rng2.sample(years, 40):
        clean = f"The war lasted from the year 17{yy:02d} to the year 17"
        corrupted = "The war lasted from the year 1701 to the year 17"
        gt.append({"clean": clean, "corrupted": corrupted, "answer": [f"{y:02d}" for y in range(yy + 1, 100)],
                   "wrong": [f"{y:02d}" for y in range(0, yy + 1)], "label": "greater-than"})
    ok = all(len(tok(g["clean"])["input_ids"]) == len(tok(g["corrupted"])["input_ids"]) for g in gt)
    two_digit = all(single(tok, f"{y:02d}") is not None for y in range(100))
    if ok and two_digit:
        diffs = []
        for g in gt:
            pr = torch.softmax(last_logits(g["clean"]), -1)
            up = sum(pr[single(tok, a)].item() for a in g["answer"])
            down = sum(pr[single(tok, w)].item() for w in g["wrong"])
            diffs.append(up - down)
        report += ["## Greater-than", "", f"{len(gt)} prompts, mean P(YY > start) - P(YY <= start) = {sum(diffs) / len(diffs):.3f}; "
                   f"positive on {sum(d > 0 for d in diffs)} of {len(gt)}.", ""]
        with open(OUT / "greater_than.jsonl", "w") as f:
            for g in gt:
                f.write(json.dumps(g) + "\n")
    else:
        report += ["## Greater-than", "", "Not written: this tokenizer does not give each two-digit year one token "
                   f"(two-digit tokens: {two_digit}; equal lengths: {ok}).", ""]
    (OUT / "CHECK.md").write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
