"""Turning records into token tensors, per task family.

Classification: {"text", "label"} -> input_ids truncated to seq_len + a label id. Sentence pairs
({"text", "text_pair", ...}) are the tokenizer's pair input, truncated longest-first so both sides
keep tokens; multi-label records ({"text", "labels": [...]}) get a 0/1 vector as their label.
Generation: {"messages": [...]} -> the tokenizer's chat template when it has one, else a plain
prompt template; labels are -100 on the prompt tokens so the loss covers the response only.
Summarization/translation: {"source", "target"} -> on an encoder-decoder, source ids (with T5's
task prefix) for the encoder and labels = target ids for the decoder (padded with -100); on a
decoder, an instruction prompt ("Summarize ...", "Translate from English to German ...") and the
target as its response, encoded as generation (loss on the target only).
Batches are padded dynamically (to the longest example in the batch). The sampler orders examples
per epoch from the seed, grouping similar lengths (sorted within mega-chunks) so padding is small.
"""
from __future__ import annotations

import bisect
import random
from typing import Iterable, Sequence

from autoft.errors import AutoftError

IGNORE = -100
PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
MEGA_CHUNK = 256  # examples sorted by length together (independent of the micro-batch size)


# -- classification ---------------------------------------------------------------------------
def encode_classification(records: Sequence[dict], tokenizer, seq_len: int,
                          label_names: Sequence[str]) -> list[dict]:
    """[{input_ids, label}] with truncation to seq_len. Unknown labels are an AutoftError.
    Pairs: the tokenizer's (text, text_pair) input, `truncation="longest_first"` (tokens come off
    the longer side first, so neither side is cut away), plus token_type_ids where the tokenizer
    makes them (BERT's segment ids). Multi-label: `label` is a 0.0/1.0 list over label_names."""
    index = {str(n): i for i, n in enumerate(label_names)}
    texts = [str(r["text"]) for r in records]
    pairs = [str(r["text_pair"]) for r in records] if records and "text_pair" in records[0] else None
    if pairs is not None:
        enc = tokenizer(texts, pairs, truncation="longest_first", max_length=seq_len, add_special_tokens=True)
    else:
        enc = tokenizer(texts, truncation=True, max_length=seq_len, add_special_tokens=True)
    types = enc.get("token_type_ids") if pairs is not None else None
    out = []
    for i, (r, ids) in enumerate(zip(records, enc["input_ids"])):
        labs = [str(x) for x in r["labels"]] if "labels" in r else [str(r["label"])]
        for lab in labs:
            if lab not in index:
                raise AutoftError(f"label {lab!r} is not one of the {len(index)} known labels",
                                  "make every split use the training split's labels")
        if "labels" in r:
            label: int | list[float] = [0.0] * len(index)
            for lab in labs:
                label[index[lab]] = 1.0
        else:
            label = index[labs[0]]
        ex = {"input_ids": ids, "label": label}
        if types is not None:
            ex["token_type_ids"] = types[i]
        out.append(ex)
    return out


# -- generation -------------------------------------------------------------------------------
def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def split_messages(messages: Sequence[dict]) -> tuple[list[dict], str]:
    """(prompt messages, final assistant reply). The last message must be the assistant's."""
    if not messages or messages[-1].get("role") != "assistant":
        raise AutoftError("a generation example must end with an assistant message",
                          "give each example a response (output column)")
    return list(messages[:-1]), str(messages[-1]["content"])


def prompt_text(tokenizer, prompt_messages: Sequence[dict]) -> tuple[str, bool]:
    """The prompt as text and whether it came from the chat template (which then carries its own
    special tokens)."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(list(prompt_messages), tokenize=False,
                                             add_generation_prompt=True), True
    parts = [str(m["content"]) for m in prompt_messages if m.get("role") != "system"]
    system = [str(m["content"]) for m in prompt_messages if m.get("role") == "system"]
    text = PROMPT_TEMPLATE.format(instruction="\n\n".join(parts))
    return ("\n".join(system) + "\n\n" + text) if system else text, False


def prompt_ids(tokenizer, prompt_messages: Sequence[dict], max_len: int | None = None) -> list[int]:
    """Token ids of a prompt exactly as training saw them (used by generation too). Longer than
    `max_len`: the longest message loses the middle of its text (head and tail kept, see
    `_cut_middle`), so the chat template, the system prompt and an instruction before or after
    the text survive; cutting the prompt's start, as before, cut them away first (a summarization
    prompt then read as a dialogue to continue)."""
    def ids_of(msgs):
        text, templated = prompt_text(tokenizer, msgs)
        return tokenizer(text, add_special_tokens=not templated)["input_ids"]

    ids = ids_of(prompt_messages)
    if max_len is None or len(ids) <= max_len:
        return ids
    msgs = [dict(m) for m in prompt_messages]
    longest = max(range(len(msgs)), key=lambda i: len(str(msgs[i].get("content", ""))))
    content = tokenizer(str(msgs[longest]["content"]), add_special_tokens=False)["input_ids"]
    excess = len(ids) - max_len
    for _ in range(4):                      # re-tokenising at the cut can shift a token or two
        keep = len(content) - excess - 2    # 2: the ellipsis
        if keep < 8:
            break
        msgs[longest]["content"] = _cut_middle(tokenizer, content, keep)
        ids = ids_of(msgs)
        if len(ids) <= max_len:
            return ids
        excess += len(ids) - max_len
    return ids[len(ids) - max_len:]         # last resort: nothing of the text left to cut


# Head + tail: of the ways to truncate a long text, keeping its start and its end did best for
# BERT classification (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?", 5.3.1);
# here the tail also holds an instruction written after the text.
HEAD_SHARE = 0.75


def _cut_middle(tokenizer, ids: Sequence[int], keep: int) -> str:
    """The text of `ids` with its middle cut out so that about `keep` tokens are left."""
    head = int(keep * HEAD_SHARE)
    return (tokenizer.decode(ids[:head]).rstrip() + " … "
            + tokenizer.decode(ids[len(ids) - (keep - head):]).lstrip())


def encode_generation(records: Sequence[dict], tokenizer, seq_len: int) -> list[dict]:
    """[{input_ids, labels}]: prompt tokens then response tokens (+ eos); labels -100 on the
    prompt. Prompt and response are tokenised separately and concatenated, which is exactly what
    generation does (prompt ids, then the model continues). Too long: the prompt's longest message
    loses its middle (prompt_ids) and the response its end, keeping at least a quarter of seq_len
    for the response."""
    out = []
    eos = tokenizer.eos_token or ""
    for r in records:
        msgs, reply = split_messages(r["messages"])
        p = prompt_ids(tokenizer, msgs)
        if has_chat_template(tokenizer):
            full = tokenizer.apply_chat_template(list(r["messages"]), tokenize=False)
            ptxt, _ = prompt_text(tokenizer, msgs)
            resp_text = full[len(ptxt):] if full.startswith(ptxt) else reply + eos
        else:
            resp_text = reply + eos
        resp = tokenizer(resp_text, add_special_tokens=False)["input_ids"]
        if len(p) + len(resp) > seq_len:
            keep_resp = min(len(resp), max(seq_len - len(p), seq_len // 4))
            keep_prompt = seq_len - keep_resp
            p = prompt_ids(tokenizer, msgs, keep_prompt) if keep_prompt > 0 else []
            resp = resp[:keep_resp]
        out.append({"input_ids": p + resp, "labels": [IGNORE] * len(p) + resp})
    return out


def pack(examples: Sequence[dict], seq_len: int, seed: int) -> list[dict]:
    """Whole examples packed into blocks of at most seq_len tokens, without crossing: each block
    carries `position_ids` that restart at 0 for every example, which is what keeps an example
    from attending to the one before it (transformers builds a block-diagonal causal mask from
    them, or the trainer turns them into a 4D mask; see Trial's packing note). No example is
    split (encode_generation already cut each to seq_len). Best-fit decreasing (TRL's "bfd"
    strategy): longest first, each into the fullest block it still fits; the blocks are then
    shuffled with `seed`. The first token of every example has label -100: nothing in its own
    example predicts it, and the previous example must not."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]["input_ids"]), i))
    blocks: list[dict] = []
    free: list[tuple[int, int]] = []              # (room left, block index), kept sorted
    for i in order:
        ex = examples[i]
        n = len(ex["input_ids"])
        if n == 0:
            continue
        k = bisect.bisect_left(free, (n, -1))       # the fullest block with room for n tokens
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = seq_len, len(blocks)
            blocks.append({"input_ids": [], "labels": [], "position_ids": []})
        blk = blocks[b]
        blk["input_ids"] += ex["input_ids"]
        blk["labels"] += [IGNORE] + list(ex["labels"][1:])
        blk["position_ids"] += list(range(n))
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    random.Random(seed).shuffle(blocks)
    return blocks


def segment_ids(position_ids: Sequence[int]) -> list[int]:
    """Which example of a packed block each token belongs to (a new one wherever the positions
    restart), like transformers' find_packed_sequence_indices."""
    out, seg = [], -1
    for k, p in enumerate(position_ids):
        if k == 0 or p != position_ids[k - 1] + 1:
            seg += 1
        out.append(seg)
    return out


# -- summarization and translation -----------------------------------------------------------
from autoft.advisor.spec import SEQ2SEQ_TASKS  # noqa: E402  (one list of the seq2seq tasks)
# The user message a decoder reads for a {source, target} record. Summarization puts the
# instruction after the text: with it before, SmolLM2-135M-Instruct read a long dialogue as one to
# continue (6 DialogSum test dialogues: 2 of 3 shown outputs went on with "#Person1#: ...", ROUGE-L
# 0.134), with it after, it wrote summaries (ROUGE-L 0.147). Translation's sources are short.
INSTRUCTIONS = {"summarization": "{text}\n\nSummarize the text above.",
                "translation": "Translate the following text from {src} to {tgt}.\n\n{text}"}
# T5 (and Flan-T5) were pretrained on a multi-task mixture whose inputs start with a task prefix
# (Raffel et al. 2020, Appendix D); fine-tuning with the same prefix starts from what it knows.
T5_PREFIXES = {"summarization": "summarize: ", "translation": "translate {src} to {tgt}: "}


def encoding_kind(task: str, config) -> str:
    """How records of `task` become tensors for a model with `config`: "classification",
    "generation" (a decoder reads prompt + response; seq2seq tasks on a decoder too) or "seq2seq"
    (an encoder-decoder: source to the encoder, target as decoder labels)."""
    if task == "classification":
        return "classification"
    if task in SEQ2SEQ_TASKS and getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    return "generation"


def instruction(task: str, text: str, source_lang: str | None = None, target_lang: str | None = None) -> str:
    """The user message asking a decoder to do `task` on `text`."""
    from autoft.autotrain.data.seq2seq import language_name

    return INSTRUCTIONS[task].format(text=text, src=language_name(source_lang), tgt=language_name(target_lang))


def source_prefix(model_type: str, task: str, source_lang: str | None = None, target_lang: str | None = None) -> str:
    """The text put before each source for an encoder-decoder: T5's task prefix, else nothing."""
    from autoft.autotrain.data.seq2seq import language_name

    if model_type != "t5" or task not in T5_PREFIXES:
        return ""
    return T5_PREFIXES[task].format(src=language_name(source_lang), tgt=language_name(target_lang))


def seq2seq_messages(record: dict, task: str, source_lang: str | None = None,
                     target_lang: str | None = None) -> list[dict]:
    """A {source, target} record as the instruction-tuning conversation a decoder is trained on."""
    return [{"role": "user", "content": instruction(task, str(record["source"]), source_lang, target_lang)},
            {"role": "assistant", "content": record["target"]}]


def encode_seq2seq(records: Sequence[dict], tokenizer, seq_len: int, target_len: int,
                   prefix: str = "") -> list[dict]:
    """[{input_ids, labels}] for an encoder-decoder: the prefixed source truncated to seq_len tokens,
    the target (tokenised as a target: Marian has a target-language vocabulary) truncated to
    target_len, both ending with the tokenizer's end-of-sequence token. The model shifts the labels
    right to make its decoder inputs."""
    src = tokenizer([prefix + str(r["source"]) for r in records], truncation=True, max_length=seq_len)
    tgt = tokenizer(text_target=[str(r["target"]) for r in records], truncation=True, max_length=target_len)
    eos = tokenizer.eos_token_id
    out = []
    for a, b in zip(src["input_ids"], tgt["input_ids"]):
        if eos is not None and (not b or b[-1] != eos):  # a tokenizer that adds no end-of-sequence:
            b = (list(b) + [eos])[-target_len:] if len(b) < target_len else list(b[:-1]) + [eos]  # generation must learn to stop
        out.append({"input_ids": a, "labels": b})
    return out


def length_cap(target_lengths: Sequence[int], slack: float = 1.25, floor: int = 8) -> int:
    """Most new tokens to generate for one example: the 99th percentile of the reference lengths
    (train targets, tokens) x `slack`. Greedy decoding stops at the end-of-sequence token; the cap
    only bounds runaway outputs, which would otherwise cost the most time."""
    if not target_lengths:
        return floor
    xs = sorted(target_lengths)
    p99 = xs[min(len(xs) - 1, max(0, -(-99 * len(xs) // 100) - 1))]
    return max(floor, int(p99 * slack + 0.999))


# -- order and batches ------------------------------------------------------------------------
def epoch_order(lengths: Sequence[int], seed: int, epoch: int, group_by_length: bool = True) -> list[int]:
    """Example indices for one epoch: a seeded permutation, then (length grouping) each chunk of
    MEGA_CHUNK examples sorted by length, longest first, so consecutive micro-batches hold
    similar lengths whatever the micro-batch size. The longest chunk-head comes first overall,
    so running out of memory shows up at the first step, not late in the epoch."""
    order = list(range(len(lengths)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if not group_by_length:
        return order
    chunks = [sorted(order[i:i + MEGA_CHUNK], key=lambda j: -lengths[j])
              for i in range(0, len(order), MEGA_CHUNK)]
    if chunks:
        longest = max(range(len(chunks)), key=lambda c: lengths[chunks[c][0]])
        chunks.insert(0, chunks.pop(longest))
    return [j for c in chunks for j in c]


class ExampleStream:
    """An endless, deterministic stream of example indices over epochs; `position` (examples
    consumed so far) is all that a checkpoint needs to resume it."""

    def __init__(self, lengths: Sequence[int], seed: int, group_by_length: bool = True):
        if not lengths:
            raise AutoftError("the training split is empty", "give the trainer some training examples")
        self.lengths, self.seed, self.group = list(lengths), seed, group_by_length
        self.position = 0
        self._epoch, self._order = -1, []

    @property
    def epoch(self) -> float:
        return self.position / len(self.lengths)

    def take(self, n: int) -> list[int]:
        out = []
        n_ex = len(self.lengths)
        while len(out) < n:
            e, i = divmod(self.position, n_ex)
            if e != self._epoch:
                self._epoch, self._order = e, epoch_order(self.lengths, self.seed, e, self.group)
            k = min(n - len(out), n_ex - i)
            out += self._order[i:i + k]
            self.position += k
        return out


def collate(examples: Iterable[dict], pad_id: int, task: str) -> dict:
    """Pad to the longest example (right padding). Returns CPU tensors: input_ids,
    attention_mask, labels (class ids, float 0/1 rows for multi-label, or token labels with
    -100), token_type_ids (pairs) and position_ids (packed blocks: restarting per example; the
    padding continues as one more segment, so no real token attends to it), and `num_tokens` (an
    int: real, non-pad tokens, for throughput, computed here on the CPU without a device sync).
    task "seq2seq": labels are the decoder's and padded to their own longest, with -100."""
    import torch

    examples = list(examples)
    if task == "seq2seq":
        return _collate_seq2seq(examples, pad_id)
    width = max(len(e["input_ids"]) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    if task == "classification":
        multi = isinstance(examples[0]["label"], list)
        labels = torch.tensor([e["label"] for e in examples], dtype=torch.float if multi else torch.long)
    else:
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long) if "token_type_ids" in examples[0] else None
    pos = torch.zeros((n, width), dtype=torch.long) if "position_ids" in examples[0] else None
    tokens = 0
    for i, e in enumerate(examples):
        L = len(e["input_ids"])
        ids[i, :L] = torch.tensor(e["input_ids"], dtype=torch.long)
        mask[i, :L] = 1
        if task != "classification":
            labels[i, :L] = torch.tensor(e["labels"], dtype=torch.long)
        if types is not None:
            types[i, :L] = torch.tensor(e["token_type_ids"], dtype=torch.long)
        if pos is not None:
            pos[i, :L] = torch.tensor(e["position_ids"], dtype=torch.long)
            pos[i, L:] = torch.arange(width - L)
        tokens += L
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "num_tokens": tokens}
    if types is not None:
        out["token_type_ids"] = types
    if pos is not None:
        out["position_ids"] = pos
    return out


def _collate_seq2seq(examples: list[dict], pad_id: int) -> dict:
    import torch

    n = len(examples)
    width = max(len(e["input_ids"]) for e in examples)
    t_width = max(len(e["labels"]) for e in examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, t_width), IGNORE, dtype=torch.long)
    tokens = 0
    for i, e in enumerate(examples):
        L, T = len(e["input_ids"]), len(e["labels"])
        ids[i, :L] = torch.tensor(e["input_ids"], dtype=torch.long)
        mask[i, :L] = 1
        labels[i, :T] = torch.tensor(e["labels"], dtype=torch.long)
        tokens += L + T
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "num_tokens": tokens}
