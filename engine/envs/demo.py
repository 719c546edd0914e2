"""The agent demo: a tiny SQL-tool model that learns on a CPU in minutes (docs/agents.md, preset ``agent-sql-cpu``).

Task family (generated from a seed, no downloads): a table ``t(x INTEGER)`` of ``N_ROWS`` random values 0-99 and
one question of four templates, each answered by one ``execute_query`` call:

* ``How many rows of t have x > K?`` → ``SELECT COUNT(*) FROM t WHERE x > K``
* ``How many rows of t have x < K?`` → ``SELECT COUNT(*) FROM t WHERE x < K``
* ``What is the sum of x over rows of t with x > K?`` → ``SELECT SUM(x) FROM t WHERE x > K``
* ``What is the largest x in t below K?`` → ``SELECT MAX(x) FROM t WHERE x < K``

The answer is what the right query returns on the row's own table (``answer``), checked by ``sql_result``.
The 320 questions (template × K in 10-89) are split by a seed into held-out (``HELDOUT_N``), dev (``DEV_N``,
what settings are chosen on) and training questions; held-out and dev questions never use a warm-start
threshold and are never trained on. ``WARM_N`` warm-start tasks use only the thresholds ``WARM_KS``. The model is
engine/envs/tiny_agent.py's: a byte-level tokenizer with digits kept as single tokens and BPE merges trained on
rendered prompts (the four-tool schema prompt shrinks from ~2 200 bytes to a few tokens), a random-init
Qwen2-architecture model, warm-started (SFT) on the warm slice's transcripts only. It then calls the tool in the
right shape but copies K only partly (it has seen few thresholds), so held-out task completion starts well
below 1 and above 0, and GRPO through carl's worker has varied groups to learn from.

Built once and cached in ``$CARL_HOME/cache/agent-sql-v<VERSION>`` (model, ``tokenizer/``, ``carl_agent.json``);
``builtin:agent-sql`` names it as a model, ``builtin:sql-tasks`` the task rows as a dataset.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

VERSION = 2
MODEL_NAME = "builtin:agent-sql"
DATASET_NAME = "builtin:sql-tasks"
N_ROWS = 6
TRAIN_N = 512
HELDOUT_N = 64
DEV_N = 32
TRAIN_SEED, HELDOUT_SEED, WARM_SEED, DEV_SEED = 11, 22, 33, 44
WARM_N = 24
WARM_KS = (14, 21, 27, 33, 38, 45, 52, 56, 63, 69, 74, 86)  # the only thresholds the warm start shows
WARM_STEPS = 150
WARM_LR = 3e-3
VOCAB_SIZE = 1024
MODEL_KW = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)

TEMPLATES: tuple[tuple[str, str], ...] = (
    ("How many rows of t have x > {k}?", "SELECT COUNT(*) FROM t WHERE x > {k}"),
    ("How many rows of t have x < {k}?", "SELECT COUNT(*) FROM t WHERE x < {k}"),
    ("What is the sum of x over rows of t with x > {k}?", "SELECT SUM(x) FROM t WHERE x > {k}"),
    ("What is the largest x in t below {k}?", "SELECT MAX(x) FROM t WHERE x < {k}"),
)
SCHEMA = "CREATE TABLE t(x INTEGER);"


# ----------------------------------------------------------------------------------------------- tasks
def _answer(values: list[int], query: str) -> Any:
    import sqlite3

    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t(x INTEGER)")
        conn.executemany("INSERT INTO t(x) VALUES (?)", [(v,) for v in values])
        return conn.execute(query).fetchone()[0]
    finally:
        conn.close()


def task(rng: random.Random, k: int | None = None, template: int | None = None) -> dict[str, Any]:
    """One task row: ``prompt`` (chat messages), ``schema``, ``data`` (JSON text), ``answer``, ``query``."""
    while True:
        values = [rng.randrange(100) for _ in range(N_ROWS)]
        t = rng.randrange(len(TEMPLATES)) if template is None else template
        kk = rng.randrange(10, 90) if k is None else k
        q, sql = TEMPLATES[t]
        query = sql.format(k=kk)
        ans = _answer(values, query)
        if ans is not None:  # SUM/MAX over no rows is NULL: draw again
            break
    return {"prompt": [{"role": "user", "content": q.format(k=kk)}], "schema": SCHEMA,
            "data": json.dumps({"t": [{"x": v} for v in values]}), "answer": str(ans), "query": query}


def combos() -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """(train, dev, held-out) question combos (template, K): a fixed, seeded split, so no held-out or dev
    question is ever trained on (only the tables differ between rows of one combo). Held-out and dev combos
    never use a warm-start threshold."""
    every = [(t, k) for t in range(len(TEMPLATES)) for k in range(10, 90)]
    random.Random(HELDOUT_SEED).shuffle(every)
    free = [c for c in every if c[1] not in WARM_KS]
    held, dev = free[:HELDOUT_N], free[HELDOUT_N: HELDOUT_N + DEV_N]
    taken = set(held) | set(dev)
    return [c for c in every if c not in taken], dev, held


def tasks(n: int, seed: int, ks: tuple[int, ...] | None = None,
          pool: list[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """``n`` rows: thresholds from ``ks`` (any template), or (template, K) combos from ``pool`` (each used once
    while n allows, in a seeded order)."""
    rng = random.Random(seed)
    if pool is not None:
        order = list(pool)
        rng.shuffle(order)
        return [task(rng, k=order[i % len(order)][1], template=order[i % len(order)][0]) for i in range(n)]
    return [task(rng, k=rng.choice(ks) if ks else None) for _ in range(n)]


def train_rows() -> list[dict[str, Any]]:
    return tasks(TRAIN_N, TRAIN_SEED, pool=combos()[0])


def dev_rows() -> list[dict[str, Any]]:
    return tasks(DEV_N, DEV_SEED, pool=combos()[1])


def heldout_rows() -> list[dict[str, Any]]:
    return tasks(HELDOUT_N, HELDOUT_SEED, pool=combos()[2])


def warm_rows() -> list[dict[str, Any]]:
    return tasks(WARM_N, WARM_SEED, WARM_KS)


def transcript(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt, reply) messages of the right rollout: one execute_query call, its result, the answer."""
    from engine.envs.sql import SqlEnvironment

    env = SqlEnvironment()
    env.reset(**row)
    result = env.execute_query(row["query"])
    env._close()
    call = {"type": "function", "function": {"name": "execute_query", "arguments": {"query": row["query"]}}}
    reply = [{"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "name": "execute_query", "content": result},
             {"role": "assistant", "content": row["answer"]}]
    return list(row["prompt"]), reply


def _tools():
    from engine.envs.factory import make_factory, tool_names

    env = make_factory("sql")()
    return [getattr(env, n) for n in tool_names("sql")]


# ----------------------------------------------------------------------------------------------- model
def warm_steps_default() -> int:
    """``CARL_AGENT_WARM_STEPS`` (tests: a quick, less trained build, cached apart), else WARM_STEPS."""
    raw = os.environ.get("CARL_AGENT_WARM_STEPS", "")
    return int(raw) if raw.isdigit() else WARM_STEPS


def cache_dir(root: Path | None = None) -> Path:
    if root is None:
        from engine.home import carl_home

        root = carl_home().cache
    steps = warm_steps_default()
    return Path(root) / (f"agent-sql-v{VERSION}" + ("" if steps == WARM_STEPS else f"-w{steps}"))


def build_tokenizer(seed: int = 0):
    """The demo's tokenizer: merges trained on rendered prompts and replies of the warm slice plus generated tasks
    (never the held-out ones); deterministic for a seed."""
    from engine.envs import tiny_agent

    tools = _tools()
    plain = tiny_agent.build_tokenizer(split_digits=True)
    corpus = []
    for r in warm_rows() + tasks(64, seed + 1000, pool=combos()[0]):
        p, reply = transcript(r)
        corpus.append(plain.apply_chat_template(p, tools=tools, add_generation_prompt=True, tokenize=False))
        corpus.append(plain.apply_chat_template(p + reply, tools=tools, tokenize=False)[len(corpus[-1]):])
    random.Random(seed).shuffle(corpus)
    return tiny_agent.build_tokenizer(corpus, vocab_size=VOCAB_SIZE, split_digits=True)


def tokenizer(root: Path | None = None):
    """The cached demo's tokenizer, else the same one built in memory (what ``train --dry-run`` shows)."""
    d = cache_dir(root) / "tokenizer"
    if (d / "tokenizer.json").is_file():
        from engine.hf_load import load_tokenizer

        return load_tokenizer(d)
    return build_tokenizer()


def build(out: Path, *, warm_steps: int = WARM_STEPS, seed: int = 0, log: Callable[[str], None] | None = None
          ) -> dict[str, Any]:
    """Build the tokenizer and model, warm-start on the warm slice, save to ``out``; returns the build info."""
    import torch

    from engine.envs import tiny_agent

    t0 = time.time()
    tools = _tools()
    tok = build_tokenizer(seed)
    model = tiny_agent.build_model(tok, seed=seed, **MODEL_KW)
    examples = [transcript(r) for r in warm_rows()]
    losses = tiny_agent.warm_start(model, tok, examples, tools, steps=warm_steps, lr=WARM_LR, batch=8, seed=seed)
    if log:
        log(f"agent-sql: warm start {warm_steps} steps, loss {losses[0]:.3f} → {losses[-1]:.3f}")
    torch.manual_seed(seed)
    tiny_agent.save(model, tok, out)
    prompt_tokens = tiny_agent.transcript_ids(tok, *examples[0], tools)[1]
    info = {"version": VERSION, "warm_steps": warm_steps, "warm_n": WARM_N, "warm_ks": list(WARM_KS),
            "loss_first": losses[0], "loss_last": losses[-1], "prompt_tokens": prompt_tokens,
            "vocab_size": len(tok), "n_params": sum(p.numel() for p in model.parameters()),
            "build_s": time.time() - t0}
    (Path(out) / "carl_agent.json").write_text(json.dumps(info), encoding="utf-8")
    return info


def ensure(root: Path | None = None, *, log: Callable[[str], None] | None = None) -> Path:
    """The cached demo model's directory (built once; a file lock keeps parallel builds apart)."""
    from filelock import FileLock

    out = cache_dir(root)
    if (out / "carl_agent.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "carl_agent.json").is_file():
            return out
        if log:
            log("agent-sql: building the demo model (once; cached)")
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        build(tmp, warm_steps=warm_steps_default(), log=log)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
    return out


def load_rows(cfg) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, held-out rows) of ``builtin:sql-tasks``: the GRPO slice shuffled by ``grpo.seed``."""
    train = train_rows()
    random.Random(cfg.grpo.seed).shuffle(train)
    if cfg.dataset.max_samples:
        train = train[: cfg.dataset.max_samples]
    return train, heldout_rows()
