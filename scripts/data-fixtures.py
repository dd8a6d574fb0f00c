#!/usr/bin/env python3
"""Writes launch/tests/fixtures/data: datasets as the ecosystem's own tools write them, and
what those tools say of them, for `launch data prepare`'s tests.

- milton.parquet: Milton's paragraphs as Hugging Face datasets stores text (pyarrow,
  snappy, several row groups, dictionary-encoded strings, two null texts, other columns);
- milton-zstd-plain.parquet: the same rows, zstd pages, no dictionary;
- shakespeare.jsonl: Shakespeare's paragraphs as JSON lines, the text under "content";
- bpe-512.json: a byte-level BPE tokenizer (Hugging Face tokenizers) trained on Milton,
  with <|endoftext|>;
- expected.json: per file, the documents pyarrow / json read and the tokens the Python
  tokenizer gives them (plus one end-of-text token per document).

Run from the repository root:
  python3 -m venv ~/.cache/sinter/data-venv
  ~/.cache/sinter/data-venv/bin/pip install pyarrow tokenizers zstandard
  ~/.cache/sinter/data-venv/bin/python scripts/data-fixtures.py
"""

import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = pathlib.Path("launch/tests/fixtures/data")


def paragraphs(name, limit):
    packed = pathlib.Path(f"data/{name}.txt.zst").read_bytes()
    text = zstandard.ZstdDecompressor().decompressobj().decompress(packed).decode()
    out, size = [], 0
    for p in text.split("\n\n"):
        p = p.strip()
        if len(p) < 40:
            continue
        out.append(p)
        size += len(p)
        if size >= limit:
            break
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    milton = paragraphs("milton", 160_000)
    shakespeare = paragraphs("shakespeare", 120_000)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        milton,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer.save(str(OUT / "bpe-512.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")

    texts = list(milton)
    texts[3] = None
    texts[len(texts) // 2] = None
    table = pa.table(
        {
            "id": pa.array(range(len(texts)), pa.int64()),
            "text": pa.array(texts, pa.string()),
            "url": pa.array([f"https://example.org/milton/{i}" for i in range(len(texts))]),
        }
    )
    pq.write_table(table, OUT / "milton.parquet", compression="snappy", row_group_size=100)
    pq.write_table(
        table,
        OUT / "milton-zstd-plain.parquet",
        compression="zstd",
        use_dictionary=False,
        row_group_size=64,
    )
    with open(OUT / "shakespeare.jsonl", "w") as f:
        for i, p in enumerate(shakespeare):
            f.write(json.dumps({"id": i, "content": p, "source": "gutenberg"}) + "\n")

    def bpe(d):
        return tokenizer.encode(d, add_special_tokens=False).ids

    read_back = [t for t in pq.read_table(OUT / "milton-zstd-plain.parquet")["text"].to_pylist() if t]
    with open(OUT / "shakespeare.jsonl") as f:
        lines = [json.loads(line)["content"] for line in f]
    expected = {
        "eos": eos,
        # BPE tokens and one <|endoftext|> per document.
        "milton.parquet": {
            "documents": len(read_back),
            "tokens": sum(len(bpe(d)) + 1 for d in read_back),
        },
        # Bytes, no end-of-text token (the byte tokenizer has none).
        "shakespeare.jsonl": {
            "documents": len(lines),
            "tokens": sum(len(d.encode()) for d in lines),
        },
        "first_milton_ids": bpe(read_back[0]),
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for p in sorted(OUT.iterdir()):
        print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
