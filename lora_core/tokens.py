"""Turning rows into model inputs: tokenizing the canonical columns, framing prompts (the tokenizer's chat
template when it has one), masking prompts from the loss, batching and padding.

    data = prepare(splits, tokenizer, cfg)      # splits from data.load_splits: tokenized (cached), packed, ordered
    data.train, data.eval, data.info
    order = LengthGroupedOrder(lengths, batch_size, seed)   # the training sampler with data.group_by_length
    collate = make_collator(cfg, tokenizer)

Training and generation frame a prompt the same way (`prompt_text`), so a tuned model is asked exactly as it was
taught. The speed choices live here, each a config field: batches of similar length (`data.group_by_length`),
tokenized data cached by content (`data.cache_tokenized`), causal-LM packing (`data.packing`). No pandas here:
models.py (generation) imports this module, and the dashboard imports models.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import sources
from .config import ExperimentConfig

IGNORE_INDEX = -100  # label value the loss skips (masked prompt tokens, padding)
GROUP_BATCHES = 50   # length grouping sorts groups of this many batches (as transformers' LengthGroupedSampler)
CACHE_FORMAT = 1     # bump when what `tokenize` writes changes: older cache entries are then never read
TOKENIZED_DIR = "tokenized"  # under the model cache: <cache>/tokenized/<key>/{train,eval}


def tokenize(splits, tokenizer, cfg: ExperimentConfig):
    """(train, eval) datasets of token ids ready for `make_collator`; the text columns are dropped."""
    import datasets

    datasets.disable_progress_bars()  # a worker's log is for events, not progress bars
    drop = ["text", "label"] if cfg.task == "seq-cls" else ["prompt", "response"]
    return tuple(ds.map(encoder(tokenizer, cfg), batched=True, remove_columns=drop, load_from_cache_file=False,
                        desc=None) for ds in (splits.train, splits.eval))


def encoder(tokenizer, cfg: ExperimentConfig):
    """The batch function `tokenize` maps over a split: canonical columns -> input ids (and labels)."""
    max_length = cfg.data.max_length
    if cfg.task == "seq-cls":
        def encode(batch):
            enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
            enc["labels"] = batch["label"]
            return enc
        return encode

    def encode_pairs(batch):
        return encode_causal(tokenizer, batch["prompt"], batch["response"], max_length, cfg.data.mask_prompt)
    return encode_pairs


def _eos_id(tokenizer) -> int | None:
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return value
    return None


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, prompt: str) -> str:
    """What the model reads before its answer, in training and in generation alike: the chat template's user
    turn and assistant header when the tokenizer has a template (its default system prompt included), else the
    prompt and a newline."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt.rstrip() + "\n"


def response_text(tokenizer, prompt: str, response: str) -> tuple[str, bool]:
    """(the answer as the template closes it, whether that already ends the turn). With a chat template the
    answer is cut from the rendered two-turn conversation, so it ends with the template's own end-of-turn
    marker (SmolLM2: '<|im_end|>\\n'); without one, the caller appends EOS."""
    if has_chat_template(tokenizer):
        head = prompt_text(tokenizer, prompt)
        full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(head):
            return full[len(head):], True
    return response, False


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt as `prompt_text` frames it. A chat template writes its own special tokens;
    otherwise the tokenizer adds its usual ones (e.g. BOS)."""
    texts = [prompt_text(tokenizer, p) for p in prompts]
    return tokenizer(texts, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def encode_causal(tokenizer, prompts: list[str], responses: list[str], max_length: int,
                  mask_prompt: bool) -> dict[str, list]:
    """prompt_text + response (+ the template's end of turn, or EOS); labels copy the ids with the prompt part
    set to -100 when masked. Too long: the response keeps at least half of max_length and the prompt loses its
    start (the end of a prompt is what the response follows), so every example keeps some tokens in the loss."""
    eos = _eos_id(tokenizer)
    prompt_ids = encode_prompts(tokenizer, prompts)
    answers = [response_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    response_ids = tokenizer([text for text, _ in answers], add_special_tokens=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for p, r, (_, closed) in zip(prompt_ids, response_ids, answers):
        r = list(r) + ([eos] if eos is not None and not closed else [])
        r = r[:max(max_length - min(len(p), max_length // 2), 1)]
        p = p[len(p) - (max_length - len(r)):] if len(p) + len(r) > max_length else p
        ids = list(p) + r
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(([IGNORE_INDEX] * len(p) if mask_prompt else list(p)) + r)
    return out


def make_collator(cfg: ExperimentConfig, tokenizer):
    """Dynamic padding to the longest example in the batch."""
    if cfg.task == "seq-cls":
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (_eos_id(tokenizer) or 0)
    return CausalCollator(pad_id)


class CausalCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100) to the longest example.

    Packed rows (they carry position_ids, see `pack`) get no attention mask: transformers then reads the
    examples' boundaries from the position ids and builds a block-diagonal causal mask (masking_utils'
    packed-sequence path), so no example attends to another. Their padding is a segment of its own (positions
    restart at 0, labels -100). The Trainer uses one collator for training (packed) and evaluation (not)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)

        def pad(key, value):
            return torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features])

        batch = {"input_ids": pad("input_ids", self.pad_id), "labels": pad("labels", IGNORE_INDEX)}
        if "position_ids" in features[0]:
            batch["position_ids"] = torch.tensor([list(f["position_ids"]) + list(range(width - len(f["input_ids"])))
                                                  for f in features])
            batch["use_cache"] = False  # a cache would switch the packed-sequence mask off
        else:
            batch["attention_mask"] = pad("attention_mask", 0)
        return batch


# -- packing (causal-lm, data.packing) ---------------------------------------------------------------------------

def pack(ds, max_length: int):
    """Training rows holding several whole examples each, at most max_length tokens (best fit, longest examples
    first). Each row carries position_ids restarting at 0 per example, which keeps the examples apart (see
    CausalCollator). Labels keep their masking, and each example's first label is -100: unpacked, nothing predicts
    an example's first token, so packed, the previous example must not learn to predict it either."""
    import datasets

    ids, labels = ds["input_ids"], ds["labels"]
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (tokens still free, row), sorted: the tightest row that fits comes first
    for i in sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i)):
        n = len(ids[i])
        j = bisect.bisect_left(free, (n, -1))
        if j == len(free):
            rows.append([i])
            bisect.insort(free, (max_length - n, len(rows) - 1))
        else:
            space, row = free.pop(j)
            rows[row].append(i)
            bisect.insort(free, (space - n, row))
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for row in rows:
        out["input_ids"].append([t for i in row for t in ids[i]])
        out["labels"].append([x for i in row for x in [IGNORE_INDEX, *labels[i][1:]]])
        out["position_ids"].append([p for i in row for p in range(len(ids[i]))])
    return datasets.Dataset.from_dict(out)


# -- batches of similar length (data.group_by_length) ------------------------------------------------------------

class LengthGroupedOrder:
    """The training sampler with data.group_by_length. Each epoch: a seeded shuffle, cut into groups of
    GROUP_BATCHES batches; each group sorted by length and cut into batches; the full batches shuffled again,
    the longest moved first (a batch too big for memory fails at step 1, and the memory meter profiles it first),
    a short last batch kept last. Deterministic per (seed, epoch): the Trainer calls set_epoch, and a resumed run
    replays the same order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order, group = rng.permutation(len(self.lengths)).tolist(), GROUP_BATCHES * self.batch_size
        batches = []
        for start in range(0, len(order), group):
            chunk = sorted(order[start:start + group], key=lambda i: -self.lengths[i])
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        short = [b for b in batches if len(b) < self.batch_size]
        full = [batches[k] for k in rng.permutation(len(batches) - len(short)).tolist()] if len(short) < len(batches) \
            else []
        if full:
            longest = max(range(len(full)), key=lambda k: max(self.lengths[i] for i in full[k]))
            full[0], full[longest] = full[longest], full[0]
        return full + short

    def __iter__(self):
        return iter([i for batch in self.batches() for i in batch])


def padding_ratio(lengths: list[int], batches: list[list[int]]) -> float:
    """Tokens in padded batches / real tokens (1.0 means no padding)."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return padded / max(sum(lengths), 1)


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(n).tolist()
    return [order[j:j + batch_size] for j in range(0, n, batch_size)]


def longest_first(ds):
    """The rows longest first (evaluation reads them in this order; its metrics do not depend on it)."""
    lengths = [len(x) for x in ds["input_ids"]]
    return ds.select(sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)))


# -- the recipe's data: tokenized once per content, then ordered and packed ----------------------------------------

@dataclass
class Prepared:
    train: Any                           # datasets.Dataset of token ids (packed rows with data.packing)
    eval: Any                            # datasets.Dataset, longest rows first with data.group_by_length
    info: dict = field(default_factory=dict)  # what the run records: cache hit/miss, seconds, padding, packing


def prepare(splits, tokenizer, cfg: ExperimentConfig, cache_dir: Path | None = None) -> Prepared:
    """The datasets a run trains and evaluates on, with each speed choice of cfg.data applied."""
    started = time.perf_counter()
    train, evals, cache = cached_tokenize(splits, tokenizer, cfg, cache_dir)
    info: dict[str, Any] = {"tokenize_cache": cache, "group_by_length": cfg.data.group_by_length,
                            "packing": cfg.data.packing}
    if cfg.data.packing:
        examples = len(train)
        train = pack(train, cfg.data.max_length)
        info["packed_examples"], info["packed_rows"] = examples, len(train)
    if cfg.data.group_by_length:
        evals = longest_first(evals)
    info["tokenize_s"] = round(time.perf_counter() - started, 3)
    lengths, batch, seed = [len(x) for x in train["input_ids"]], cfg.train.batch_size, cfg.train.seed
    info["padding_ratio_random"] = round(padding_ratio(lengths, random_batches(len(lengths), batch, seed)), 3)
    info["padding_ratio"] = round(padding_ratio(lengths, LengthGroupedOrder(lengths, batch, seed).batches()), 3) \
        if cfg.data.group_by_length else info["padding_ratio_random"]
    return Prepared(train, evals, info)


def tokenized_cache() -> Path:
    return sources.cache_root() / TOKENIZED_DIR


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of everything that decides the tokenizer's output (vocabulary, normalizer, special tokens, chat
    template), or None for a tokenizer without a serializable backend (then nothing is cached)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    h = hashlib.sha256(backend.to_str().encode("utf-8"))
    h.update(json.dumps([type(tokenizer).__name__, getattr(tokenizer, "chat_template", None), _eos_id(tokenizer),
                         tokenizer.pad_token_id], default=str).encode("utf-8"))
    return h.hexdigest()


def cache_key(splits, tokenizer, cfg: ExperimentConfig) -> str | None:
    """The content key of a run's tokenized data: the rows (data fingerprint), the tokenizer, and the config
    fields `tokenize` reads; None when the tokenizer cannot be fingerprinted."""
    tok = tokenizer_fingerprint(tokenizer)
    if tok is None:
        return None
    parts = {"format": CACHE_FORMAT, "data": splits.fingerprint, "tokenizer": tok, "task": cfg.task,
             "max_length": cfg.data.max_length, "mask_prompt": cfg.task == "causal-lm" and cfg.data.mask_prompt,
             "versions": [metadata.version(p) for p in ("tokenizers", "transformers", "datasets")]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def _cache_complete(folder: Path) -> bool:
    return (folder / "train" / "dataset_info.json").is_file() and (folder / "eval" / "dataset_info.json").is_file()


def cached_tokenize(splits, tokenizer, cfg: ExperimentConfig, cache_dir: Path | None = None) -> tuple[Any, Any, str]:
    """(train, eval, hit | miss | off | not cached: why). A hit reads the arrow files a previous run wrote (memory
    mapped); a miss tokenizes and writes them atomically (temp folder renamed into place), so concurrent runs of a
    sweep never read half an entry."""
    import datasets

    if not cfg.data.cache_tokenized:
        return *tokenize(splits, tokenizer, cfg), "off"
    key = cache_key(splits, tokenizer, cfg)
    if key is None:
        return *tokenize(splits, tokenizer, cfg), "not cached: the tokenizer has no serializable backend"
    folder = (cache_dir or tokenized_cache()) / key
    if _cache_complete(folder):
        return datasets.load_from_disk(str(folder / "train")), datasets.load_from_disk(str(folder / "eval")), "hit"
    train, evals = tokenize(splits, tokenizer, cfg)
    try:
        sources.build_once(folder, lambda tmp: (train.save_to_disk(str(tmp / "train")),
                                                evals.save_to_disk(str(tmp / "eval"))), complete=_cache_complete)
    except OSError as exc:  # a full or read-only cache costs this run nothing but the next one's time
        return train, evals, f"miss (not saved: {exc})"
    return train, evals, "miss"
