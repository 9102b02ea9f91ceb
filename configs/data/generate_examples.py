"""Writes the small generated data of the example configs (tools, reasoning, text,
completion, preference): ``python configs/data/generate_examples.py``. Deterministic, so the
committed files are exactly what it writes."""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
CITIES = {"Paris": 18, "Tokyo": 24, "Lima": 21, "Oslo": 7, "Cairo": 33, "Quito": 15}
ZONES = {"Europe/Paris": "14:05", "Asia/Tokyo": "21:05", "America/Lima": "07:05"}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current temperature in a city, in Celsius",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in an IANA time zone",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                       "required": ["timezone"]}}},
]


def _call(n: int, name: str, **arguments: str) -> dict:
    return {"id": f"call{n:05d}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def tool_records(rng: random.Random) -> list[dict]:
    """One call, parallel calls, and a call after a call; some in LLaMA-Factory's
    ShareGPT shape (function_call/observation with a JSON tools column)."""
    rows = []
    for n in range(120):
        city, other = rng.sample(sorted(CITIES), 2)
        zone = rng.choice(sorted(ZONES))
        CITIES[city], CITIES[other] = rng.randint(-5, 40), rng.randint(-5, 40)
        shape = n % 4
        if shape == 0:  # one call
            calls = [_call(1, "get_weather", city=city)]
            messages = [{"role": "user", "content": f"How warm is it in {city}?"},
                        {"role": "assistant", "content": "", "tool_calls": calls},
                        {"role": "tool", "tool_call_id": "call00001",
                         "content": json.dumps({"celsius": CITIES[city]})},
                        {"role": "assistant", "content": f"It is {CITIES[city]}C in {city}."}]
        elif shape == 1:  # two calls in one turn
            calls = [_call(1, "get_weather", city=city), _call(2, "get_weather", city=other)]
            messages = [{"role": "user", "content": f"Compare {city} and {other}."},
                        {"role": "assistant", "content": "", "tool_calls": calls},
                        {"role": "tool", "tool_call_id": "call00001",
                         "content": json.dumps({"celsius": CITIES[city]})},
                        {"role": "tool", "tool_call_id": "call00002",
                         "content": json.dumps({"celsius": CITIES[other]})},
                        {"role": "assistant", "content":
                            f"{city} has {CITIES[city]}C and {other} {CITIES[other]}C."}]
        elif shape == 2:  # a call, then another call
            messages = [{"role": "user", "content": f"Weather in {city}, then the time in {zone}."},
                        {"role": "assistant", "content": "",
                         "tool_calls": [_call(1, "get_weather", city=city)]},
                        {"role": "tool", "tool_call_id": "call00001",
                         "content": json.dumps({"celsius": CITIES[city]})},
                        {"role": "assistant", "content": "",
                         "tool_calls": [_call(2, "get_time", timezone=zone)]},
                        {"role": "tool", "tool_call_id": "call00002", "content": ZONES[zone]},
                        {"role": "assistant", "content":
                            f"{city}: {CITIES[city]}C. It is {ZONES[zone]} in {zone}."}]
        else:  # LLaMA-Factory's ShareGPT shape
            rows.append({"tools": json.dumps(TOOLS), "conversations": [
                {"from": "human", "value": f"Is it hot in {city}?"},
                {"from": "function_call",
                 "value": json.dumps({"name": "get_weather", "arguments": {"city": city}})},
                {"from": "observation", "value": json.dumps({"celsius": CITIES[city]})},
                {"from": "gpt", "value": f"{city} is at {CITIES[city]}C."}]})
            continue
        rows.append({"tools": TOOLS, "messages": messages})
    return rows


def reasoning_records(rng: random.Random) -> list[dict]:
    """Arithmetic with a worked reasoning trace in every assistant turn, one or two
    exchanges (the first turn's reasoning is what templates drop)."""
    rows = []
    for _ in range(120):
        a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
        messages = [{"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a + b}.",
                     "reasoning_content": f"{a} plus {b}: {a} + {b} = {a + b}."}]
        if rng.random() < 0.5:
            messages += [{"role": "user", "content": f"Times {c}?"},
                         {"role": "assistant", "content": f"{(a + b) * c}.",
                          "reasoning_content": f"{a + b} times {c} = {(a + b) * c}."}]
        rows.append({"messages": messages})
    return rows


def text_documents(rng: random.Random) -> dict[str, str]:
    """Markdown notes, a few paragraphs each, some longer than one block."""
    documents = {}
    for n, (city, celsius) in enumerate(sorted(CITIES.items())):
        paragraphs = [f"# {city}\n\n{city} is a city whose weather this note records."]
        for day in range(rng.randint(3, 12)):
            t = celsius + rng.randint(-4, 4)
            paragraphs.append(f"On day {day + 1} the temperature in {city} was {t} degrees "
                              f"Celsius, {'warmer' if t > celsius else 'cooler'} than usual.")
        documents[f"note-{n}.md"] = "\n\n".join(paragraphs) + "\n"
    return documents


def completion_records(rng: random.Random) -> list[dict]:
    """Prompt/completion pairs for a base model: the completion ends the sentence."""
    rows = []
    for _ in range(150):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append({"prompt": f"Q: {a} + {b} =", "completion": f" {a + b}"})
    return rows


CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Peru": "Lima", "Norway": "Oslo",
            "Egypt": "Cairo", "Ecuador": "Quito", "Italy": "Rome", "Kenya": "Nairobi",
            "Spain": "Madrid", "Chile": "Santiago", "Greece": "Athens", "Ghana": "Accra",
            "Canada": "Ottawa", "Poland": "Warsaw", "Vietnam": "Hanoi", "Cuba": "Havana"}
ASK_CAPITAL = ["What is the capital of {}?", "Which city is the capital of {}?",
               "Name the capital of {}.", "Tell me the capital of {}."]
UNHELPFUL = ["I don't know.", "Figure it out yourself.", "Why would I tell you?",
             "That is not my problem.", "Ask someone else."]


def preference_records(rng: random.Random) -> list[dict]:
    """Preference pairs in the three shapes lorapipe reads: the chosen reply answers
    correctly and politely; the rejected one refuses rudely or gets the answer wrong."""
    rows = []
    for n in range(400):
        if n % 2:
            a, b = rng.randint(1, 40), rng.randint(1, 40)
            question, answer = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
            wrong = f"{a} plus {b} is {a + b + rng.choice([-3, -2, -1, 1, 2, 3])}."
        else:
            country = rng.choice(sorted(CAPITALS))
            other = rng.choice(sorted(set(CAPITALS.values()) - {CAPITALS[country]}))
            question = rng.choice(ASK_CAPITAL).format(country)
            answer = f"The capital of {country} is {CAPITALS[country]}."
            wrong = f"The capital of {country} is {other}."
        rejected = rng.choice(UNHELPFUL) if rng.random() < 0.5 else wrong
        shape = n % 3
        if shape == 0:  # prompt text, replies text
            rows.append({"prompt": question, "chosen": answer, "rejected": rejected})
        elif shape == 1:  # prompt messages, replies as assistant messages
            rows.append({"prompt": [{"role": "system", "content": "You are a helpful assistant."},
                                    {"role": "user", "content": question}],
                         "chosen": [{"role": "assistant", "content": answer}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        else:  # UltraFeedback/HH: two whole conversations sharing the prompt
            user = {"role": "user", "content": question}
            rows.append({"chosen": [user, {"role": "assistant", "content": answer}],
                         "rejected": [user, {"role": "assistant", "content": rejected}]})
    return rows


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(0)
    _jsonl(HERE / "tools.jsonl", tool_records(rng))
    _jsonl(HERE / "reasoning.jsonl", reasoning_records(rng))
    _jsonl(HERE / "completion.jsonl", completion_records(rng))
    _jsonl(HERE / "preference.jsonl", preference_records(random.Random(1)))
    notes = HERE / "notes"
    notes.mkdir(exist_ok=True)
    for name, text in text_documents(rng).items():
        (notes / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
