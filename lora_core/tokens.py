"""Turning rows into model inputs: tokenizing the canonical columns, framing prompts (the tokenizer's chat
template when it has one), masking prompts from the loss, and padding batches.

    train_ds, eval_ds = tokenize(splits, tokenizer, cfg)   # splits from data.load_splits
    collate = make_collator(cfg, tokenizer)

Training and generation frame a prompt the same way (`prompt_text`), so a tuned model is asked exactly as it was
taught. No pandas here: models.py (generation) imports this module, and the dashboard imports models.
"""
from __future__ import annotations

from .config import ExperimentConfig

IGNORE_INDEX = -100  # label value the loss skips (masked prompt tokens, padding)


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
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100) to the longest example."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)

        def pad(key, value):
            return torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features])

        return {"input_ids": pad("input_ids", self.pad_id), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", IGNORE_INDEX)}
