"""Sources, cleaning, the 9:1 split, masks and dynamic padding, truncation, and the tokenized cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import toy_reviews, windows_copy, write_csv
from sklearn.model_selection import train_test_split

from bertgpt.data import tokenize
from bertgpt.data.base import PadCollator, group_by_length
from bertgpt.data.reviews import (
    IMDBDataModule,
    bundled_csv,
    detect_source,
    load_corpus,
    read_lines,
    read_table,
)
from bertgpt.data.tagging import TaggingDataModule
from bertgpt.errors import UserError


def write_pair(folder, reviews: str, labels: str):
    folder.mkdir(exist_ok=True)
    (folder / "reviews.txt").write_text(reviews, encoding="utf-8")
    (folder / "labels.txt").write_text(labels, encoding="utf-8")
    return folder


# --- sources -------------------------------------------------------------------------------------------


def test_pair_source_trailing_newline_is_not_a_review(tmp_path):
    folder = write_pair(tmp_path / "pair", "a fine film\nawful stuff\n", "positive\nnegative\n")
    corpus = load_corpus(path=str(folder))
    assert corpus.train.texts == ["a fine film", "awful stuff"]
    assert corpus.train.labels == [1, 0]
    assert corpus.test is None


@pytest.mark.parametrize(
    "reviews, labels, message",
    [
        ("one\ntwo\nthree\n", "positive\nnegative\n", "has 3 lines but"),
        ("one\n\ntwo\n", "positive\nnegative\npositive\n", "line 2: blank line"),
        ("one\ntwo\n", "positive\nmeh\n", "line 2: unknown label 'meh'"),
        ("", "", "the file is empty"),
    ],
)
def test_pair_source_bad_input_names_the_problem(tmp_path, reviews, labels, message):
    folder = write_pair(tmp_path / "pair", reviews, labels)
    with pytest.raises(UserError, match=message):
        load_corpus(path=str(folder))


def test_non_utf8_bytes_name_the_line(tmp_path):
    folder = write_pair(tmp_path / "pair", "", "positive\nnegative\n")
    (folder / "reviews.txt").write_bytes(b"fine\ncaf\xe9 au lait\n")
    with pytest.raises(UserError, match=r"line 2: bytes that are not UTF-8"):
        load_corpus(path=str(folder))


def test_aclimdb_layout_keeps_its_own_test_split(tmp_path):
    root = tmp_path / "aclImdb"
    for split, n in (("train", 3), ("test", 2)):
        for sub in ("pos", "neg"):
            (root / split / sub).mkdir(parents=True)
            for i in range(n):
                (root / split / sub / f"{i}_7.txt").write_text(f"{sub} review {i}<br />more", encoding="utf-8")
    corpus = load_corpus(path=str(tmp_path))  # the parent folder is recognised too
    assert len(corpus.train) == 6 and len(corpus.test) == 4
    assert sorted(corpus.train.labels) == [0, 0, 0, 1, 1, 1]
    assert all(t.startswith("pos") == bool(y) for t, y in zip(corpus.test.texts, corpus.test.labels))


def test_csv_and_jsonl_with_named_columns(tmp_path):
    texts, labels = toy_reviews(10)
    csv_path = write_csv(tmp_path / "r.csv", texts, ["positive" if y else "negative" for y in labels], "review", "sentiment")
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps({"review": t, "sentiment": y}) for t, y in zip(texts, labels)) + "\n")
    for path in (csv_path, jsonl):
        corpus = load_corpus(path=str(path), text_column="review", label_column="sentiment")
        assert corpus.train.texts == texts and corpus.train.labels == labels


def test_files_saved_on_windows_read_like_plain_ones(tmp_path):
    """A byte-order mark and CRLF line ends change nothing: not the first label, a column name, nor a review."""
    texts, labels = toy_reviews(6)
    plain = write_pair(tmp_path / "pair", "\n".join(texts) + "\n", "\n".join("positive" if y else "negative" for y in labels) + "\n")
    windows = tmp_path / "windows"
    windows.mkdir()
    for name in ("reviews.txt", "labels.txt"):
        windows_copy(plain / name, windows / name)
    assert (windows / "labels.txt").read_bytes().startswith(b"\xef\xbb\xbfnegative\r\n")
    assert load_corpus(path=str(windows)) == load_corpus(path=str(plain))
    assert read_lines(windows / "reviews.txt") == read_lines(plain / "reviews.txt") == texts  # predict's file=
    csv_path = write_csv(tmp_path / "r.csv", texts, labels)
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels)) + "\n")
    for path in (csv_path, jsonl):
        assert load_corpus(path=str(windows_copy(path))) == load_corpus(path=str(path)) == load_corpus(path=str(plain))
    review = tmp_path / "aclImdb" / "train" / "pos" / "0_9.txt"
    review.parent.mkdir(parents=True)
    review.write_text("line one\nline two", encoding="utf-8")
    windows_copy(review, review)
    assert load_corpus(path=str(tmp_path / "aclImdb")).train.texts == ["line one\nline two"]


def test_datasets_files_read_like_the_csv(tmp_path):
    """A save_to_disk folder, a Parquet file and an Arrow file give the CSV's corpus: ClassLabel ids by their names,
    string labels as in a CSV, and a missing column names the columns there are."""
    import datasets

    texts, labels = toy_reviews(12)
    expected = load_corpus(path=str(write_csv(tmp_path / "r.csv", texts, labels, "review", "sentiment")),
                           text_column="review", label_column="sentiment")
    features = datasets.Features({"review": datasets.Value("string"), "sentiment": datasets.ClassLabel(names=["neg", "pos"])})
    dataset = datasets.Dataset.from_dict({"review": texts, "sentiment": labels}, features=features)
    dataset.save_to_disk(tmp_path / "saved")
    dataset.to_parquet(tmp_path / "r.parquet")
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    named = tmp_path / "named.parquet"  # labels as strings, no ClassLabel
    datasets.Dataset.from_dict({"review": texts, "sentiment": ["positive" if y else "negative" for y in labels]}).to_parquet(named)
    for path, source in ((tmp_path / "saved", "hf_disk"), (tmp_path / "r.parquet", "parquet"), (arrow, "arrow"), (named, "parquet")):
        assert detect_source(str(path)) == source
        assert load_corpus(path=str(path), text_column="review", label_column="sentiment") == expected, path
    assert load_corpus("parquet", str(named), "review", "sentiment") == expected  # explicit data.source
    with pytest.raises(UserError, match=r"r.parquet: no column 'text' \(found: review, sentiment\). Set data.text_column"):
        load_corpus(path=str(tmp_path / "r.parquet"))
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="broken.parquet: not a readable parquet dataset"):
        load_corpus(path=str(tmp_path / "broken.parquet"))


def test_dataset_dict_keeps_its_own_validation_and_test_splits(tmp_path, tiny_bert):
    import datasets

    texts, labels = toy_reviews(60)
    part = lambda a, b: datasets.Dataset.from_dict({"text": texts[a:b], "label": labels[a:b]})  # noqa: E731
    unlabelled = datasets.Dataset.from_dict({"text": ["no label"], "label": [-1]})
    datasets.DatasetDict(train=part(0, 40), validation=part(40, 50), test=part(50, 60), unsupervised=unlabelled).save_to_disk(tmp_path / "dd")
    corpus = load_corpus(path=str(tmp_path / "dd"))
    assert (corpus.train.texts, corpus.val.texts, corpus.test.texts) == (texts[:40], texts[40:50], texts[50:])
    raw = IMDBDataModule(tokenizer=tiny_bert, path=str(tmp_path / "dd"), cache_dir=str(tmp_path / "cache")).raw_splits()
    assert raw["val"] == corpus.val and raw["test"] == corpus.test and raw["train"] == corpus.train  # no 9:1 cut
    datasets.DatasetDict(train=part(0, 40)).save_to_disk(tmp_path / "one")  # one split: the usual 9:1 split
    raw = IMDBDataModule(tokenizer=tiny_bert, path=str(tmp_path / "one"), cache_dir=str(tmp_path / "cache")).raw_splits()
    assert {k: len(v) for k, v in raw.items()} == {"train": 36, "val": 4, "test": 4}
    datasets.DatasetDict(a=part(0, 40), b=unlabelled).save_to_disk(tmp_path / "odd")
    with pytest.raises(UserError, match="splits a, b, none of them a training split"):
        load_corpus(path=str(tmp_path / "odd"))
    unlabelled.save_to_disk(tmp_path / "unlabelled")
    with pytest.raises(UserError, match=r"unlabelled, row 1: unknown label -1"):
        load_corpus(path=str(tmp_path / "unlabelled"))


def test_test_all_makes_every_review_the_test_split(toy_csv, tiny_bert, tmp_path):
    dm = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), test_all=True, cache_dir=str(tmp_path))
    raw = dm.raw_splits()
    assert list(raw) == ["test"] and raw["test"] == load_corpus(path=str(toy_csv)).train
    assert dm.test_origin == f"all 200 reviews of {toy_csv}"
    dm.setup("test")
    assert len(dm.splits["test"]) == 200 and len(dm.test_dataloader().dataset) == 200
    limited = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), test_all=True, test_size=50, cache_dir=str(tmp_path))
    assert len(limited.raw_splits()["test"]) == 50 and limited.test_origin == f"50 of the 200 reviews of {toy_csv}"
    held_out = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), cache_dir=str(tmp_path))
    held_out.raw_splits()
    assert held_out.test_origin == f"the 20-review held-out split of the training data ({toy_csv})"


def test_table_rows_filtered_and_ragged(tmp_path):
    """`where` keeps matching rows; a short CSV row or a JSON record without the text key is an empty text."""
    path = tmp_path / "r.csv"
    path.write_text("source,text,label\nimdb,good film,1\nother,skip me,0\nimdb,bad film,0\n")
    corpus = read_table(path, where={"source": "imdb"})
    assert (corpus.train.texts, corpus.train.labels) == (["good film", "bad film"], [1, 0])
    with pytest.raises(UserError, match="no rows match"):
        read_table(path, where={"source": "rotten"})
    path.write_text("source,text,label\nimdb,good film,1\nimdb\n")
    with pytest.raises(UserError, match="row at line 3: empty text"):
        read_table(path)
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "good", "label": 1}\n{"label": 0}\n')
    with pytest.raises(UserError, match="row at line 2: empty text"):
        read_table(jsonl)


def test_table_without_the_text_column(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["x"], [1], "body", "label")
    with pytest.raises(UserError, match=r"no column 'text' \(found: body, label\)"):
        load_corpus(path=str(path))


def test_bundled_source_is_the_25k_imdb_reviews():
    corpus = read_table(bundled_csv(), where={"source": "imdb"})
    assert len(corpus.train) == 25_000
    assert sum(corpus.train.labels) == 12_500
    assert any("<br />" in t for t in corpus.train.texts[:200])  # raw markup: cleaning is ours to do


def test_clean_drops_markup_and_folds_space():
    assert tokenize.clean("Great.<br /><br />Really  great<BR/>film ") == "Great. Really great film"


# --- split ---------------------------------------------------------------------------------------------


def test_split_is_the_classic_9_to_1_at_random_state_2024(toy_csv, tiny_bert, tmp_path):
    dm = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), cache_dir=str(tmp_path / "cache"))
    raw = dm.raw_splits()
    assert (len(raw["train"]), len(raw["val"]), len(raw["test"])) == (180, 20, 20)
    texts, labels = toy_reviews()
    x_train, x_val, _, _ = train_test_split(texts, labels, random_state=2024, test_size=0.1)  # the classic call
    assert raw["train"].texts == x_train and raw["val"].texts == x_val
    assert raw["test"].texts == raw["val"].texts  # no test split of its own: the 10% is also the test set
    again = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), cache_dir=str(tmp_path / "cache")).raw_splits()
    assert again["train"].texts == raw["train"].texts


def test_bundled_split_sizes(tiny_bert):
    raw = IMDBDataModule(tokenizer=tiny_bert).raw_splits()
    assert (len(raw["train"]), len(raw["val"]), len(raw["test"])) == (22_500, 2_500, 2_500)


def test_size_limits_take_a_subset(toy_csv, tiny_bert):
    raw = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), train_size=50, val_size=8).raw_splits()
    assert (len(raw["train"]), len(raw["val"]), len(raw["test"])) == (50, 8, 8)


def test_single_class_data_is_refused(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "r.csv", ["good", "great", "fine"], [1, 1, 1])
    with pytest.raises(UserError, match="only label 1"):
        IMDBDataModule(tokenizer=tiny_bert, path=str(path)).raw_splits()


# --- tokenization, masks, padding ----------------------------------------------------------------------


def test_masks_and_dynamic_padding(toy_csv, tiny_bert, tmp_path):
    dm = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), eval_batch_size=16, cache_dir=str(tmp_path), group_by_length=False)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = dm.splits["val"].lengths[:16]
    assert ids.shape == (16, int(lengths.max())) and ids.shape[1] < dm.hparams.max_length  # padded to the batch, not 128
    assert torch.equal(mask.sum(1), lengths)
    assert (ids[mask == 0] == dm.tokenizer.pad_token_id).all()
    assert (ids[:, 0] == dm.tokenizer.cls_token_id).all()
    assert ids[torch.arange(16), lengths - 1].eq(dm.tokenizer.sep_token_id).all()


def padding_fraction(loader) -> float:
    pads = total = 0
    for batch in loader:
        pads += int((batch["attention_mask"] == 0).sum())
        total += batch["attention_mask"].numel()
    return pads / total


def test_length_grouped_batches_pad_less_and_cover_every_review_once(tmp_path, tiny_bert):
    texts, labels = toy_reviews(600, seed=3)
    texts = [t + " the" * (i * 7 % 60) for i, t in enumerate(texts)]  # lengths 10 to 80 tokens, well mixed
    path = write_csv(tmp_path / "long.csv", texts, labels)
    loaders = {}
    for grouped in (False, True):
        dm = IMDBDataModule(tokenizer=tiny_bert, path=str(path), batch_size=8, eval_batch_size=8, cache_dir=str(tmp_path), group_by_length=grouped)
        dm.setup()
        loaders[grouped] = dm.train_dataloader(), dm.val_dataloader()
    (plain_train, plain_val), (grouped_train, grouped_val) = loaders[False], loaders[True]
    assert padding_fraction(grouped_train) < padding_fraction(plain_train) / 3
    assert padding_fraction(grouped_val) < padding_fraction(plain_val) / 3
    sampler = grouped_train.sampler
    first = list(sampler)
    assert sorted(first) == sorted(plain_train.sampler) == list(range(540))  # every training review, once
    assert list(sampler) == first  # a function of (seed, epoch) alone: what resuming relies on
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)
    lengths = dm.splits["train"].lengths.tolist()
    spreads = [max(lengths[i] for i in first[b : b + 8]) - min(lengths[i] for i in first[b : b + 8]) for b in range(0, 536, 8)]
    assert sum(spreads) / len(spreads) < 5  # similar lengths within a batch ...
    batch_means = [sum(lengths[i] for i in first[b : b + 8]) / 8 for b in range(0, 64, 8)]
    assert batch_means != sorted(batch_means, reverse=True)  # ... but the batches in random order


def test_length_grouping_keeps_the_partial_batch_last():
    lengths = list(range(100))
    order = group_by_length(list(range(100)), lengths, batch_size=8, generator=torch.Generator().manual_seed(0), window=4)
    assert sorted(order) == lengths
    full, tail = order[:96], order[96:]
    assert len(tail) == 4 and all(max(full[b : b + 8]) - min(full[b : b + 8]) == 7 for b in range(0, 96, 8))


def test_grouped_batches_split_across_ranks_are_the_one_process_batches():
    """Under DDP each step's reviews, over both ranks, are the batch one process takes at twice the batch size."""
    from torch.utils.data import DistributedSampler

    from bertgpt.data.base import ResumableSampler

    data, lengths = list(range(1000)), torch.randint(10, 300, (1000,), generator=torch.Generator().manual_seed(0))
    for epoch in range(2):
        single = ResumableSampler(data, 1, 0, seed=7, batch_size=16, lengths=lengths)
        single.set_epoch(epoch)
        one = list(single)
        plain = DistributedSampler(data, 1, 0, shuffle=True, seed=7)
        plain.set_epoch(epoch)
        assert one == group_by_length(list(plain), lengths.tolist(), 16, torch.Generator().manual_seed(7 + epoch + 1))
        ranks = []
        for rank in range(2):
            sampler = ResumableSampler(data, 2, rank, seed=7, batch_size=8, lengths=lengths)
            sampler.set_epoch(epoch)
            ranks.append(list(sampler))
        assert len(ranks[0]) == len(ranks[1]) == 500 and sorted(ranks[0] + ranks[1]) == data
        for i in range(0, 500, 8):
            assert sorted(ranks[0][i : i + 8] + ranks[1][i : i + 8]) == sorted(one[2 * i : 2 * i + 16])


def test_left_padding_puts_pads_first():
    collate = PadCollator(pad_token_id=0, padding_side="left")
    batch = collate([(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 0)])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["labels"].tolist() == [1, 0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_to_multiple_rounds_the_width_and_masks_the_extra(side):
    collate = PadCollator(pad_token_id=0, padding_side=side, multiple=4)
    batch = collate([(torch.arange(1, 6), 1), (torch.tensor([9]), 0)])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 1]
    real = batch["input_ids"][batch["attention_mask"].bool()].tolist()
    assert real == [1, 2, 3, 4, 5, 9]
    assert collate([(torch.arange(1, 9), 1)])["input_ids"].shape == (1, 8)  # already a multiple: unchanged


def test_pad_to_multiple_below_one_is_refused():
    with pytest.raises(UserError, match="pad_to_multiple_of=0"):
        IMDBDataModule(tokenizer="unused", pad_to_multiple_of=0)


@pytest.mark.parametrize("option, message", [
    ({"batch_size": 0}, "data.batch_size=0: a batch holds at least one"),
    ({"eval_batch_size": -1}, "data.eval_batch_size=-1: a batch holds at least one"),
    ({"train_size": -100}, "data.train_size=-100: keep at least one"),  # a slice's [:-100] would keep all but 100
    ({"test_size": 0}, "data.test_size=0: keep at least one"),
])
def test_batch_sizes_and_size_limits_below_one_are_refused(option, message):
    for datamodule, item in ((IMDBDataModule, "review"), (TaggingDataModule, "sentence")):
        with pytest.raises(UserError, match=f"{message} {item}"):
            datamodule(tokenizer="unused", **option)


@pytest.mark.parametrize("truncation", ["head", "head_tail"])
def test_truncation_keeps_max_length_and_special_tokens(tiny_bert, truncation):
    from bertgpt.models.library import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert)
    text = "start " + " ".join(f"w{i}" for i in range(300)) + " finale"
    (ids,) = tokenize.encode(tokenizer, [text], max_length=32, truncation=truncation)
    assert len(ids) == 32 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.startswith("start")
    assert decoded.endswith("finale") == (truncation == "head_tail")


@pytest.mark.parametrize("checkpoint", ["tiny_bert", "tiny_gpt2"])
def test_backend_batch_gives_the_ids_of_the_tokenizer_call(checkpoint, request):
    from bertgpt.models.library import load_tokenizer

    tokenizer = load_tokenizer(request.getfixturevalue(checkpoint))
    texts = [tokenize.clean(t) for t in toy_reviews(50, seed=4)[0]] + ["", "Ünïcödé — quotes' \"and\" émojis 🎬 " * 9]
    for max_length in (None, 16):
        expected = tokenizer(texts, truncation=max_length is not None, max_length=max_length)["input_ids"]
        assert tokenize.batch_ids(tokenizer, texts, max_length) == expected
    assert tokenize.batch_ids(tokenizer, texts, add_special_tokens=False) == tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert len(tokenizer(texts[-1])["input_ids"]) > 16  # the copy left no truncation on the tokenizer


def long_texts() -> list[str]:
    texts, _ = toy_reviews(40, seed=5)
    return [t * (i % 9 + 1) for i, t in enumerate(texts)] + ["x" * 3000, "short", "", "word " * 200 + "y" * 500, " spaced  out " * 80]


@pytest.mark.parametrize("checkpoint", ["tiny_bert", "tiny_gpt2"])
def test_head_truncation_equals_tokenizing_everything(checkpoint, request):
    """`encode` tokenizes only a head of each text; the ids must be those of the whole text, truncated."""
    from bertgpt.models.library import load_tokenizer

    tokenizer = load_tokenizer(request.getfixturevalue(checkpoint))
    texts = long_texts()
    for max_length in (8, 16, 64):
        expected = tokenizer([tokenize.clean(t) for t in texts], truncation=True, max_length=max_length)["input_ids"]
        assert tokenize.encode(tokenizer, texts, max_length) == expected


@pytest.mark.slow
def test_head_truncation_on_the_bundled_reviews():
    from bertgpt.models.library import load_tokenizer

    texts = [tokenize.clean(t) for t in load_corpus("bundled", None, "text", "label").train.texts[:3000]]
    for name in ("all-minilm-l6-v2", "smollm2-135m"):
        tokenizer = load_tokenizer(name)
        assert tokenize.encode(tokenizer, texts, 128) == tokenizer(texts, truncation=True, max_length=128)["input_ids"], name


def test_head_tail_split_follows_sun_et_al(tiny_bert):
    from bertgpt.models.library import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert)
    words = [f"x{i}" for i in range(2000)]
    (ids,) = tokenize.encode(tokenizer, [" ".join(words)], max_length=512, truncation="head_tail")
    body = ids[1:-1]
    full = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    assert body[:128] == full[:128] and body[128:] == full[-382:]  # 128 + 382 at 512


def test_gpt2_without_pad_token_pads_with_eos(tiny_gpt2, toy_csv, tmp_path):
    dm = IMDBDataModule(tokenizer=tiny_gpt2, path=str(toy_csv), batch_size=8, cache_dir=str(tmp_path))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert dm.tokenizer.pad_token_id == dm.tokenizer.eos_token_id
    assert (batch["input_ids"][batch["attention_mask"] == 0] == dm.tokenizer.eos_token_id).all()


# --- cache ---------------------------------------------------------------------------------------------


def test_second_setup_hits_the_cache(toy_csv, tiny_bert, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), cache_dir=str(cache))
    first.setup()
    files = list((cache / "tokenized").glob("*.pt"))
    assert len(files) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again despite a valid cache")

    monkeypatch.setattr(tokenize, "encode", no_tokenizing)
    second = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), cache_dir=str(cache))
    second.setup()
    assert torch.equal(second.splits["train"].ids, first.splits["train"].ids)


def test_cache_key_changes_with_settings_and_data(toy_csv, tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    for kwargs in ({}, {"max_length": 64}, {"truncation": "head_tail"}, {"train_size": 20}):
        IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), cache_dir=str(cache), **kwargs).setup()
    assert len(list((cache / "tokenized").glob("*.pt"))) == 4


def test_corrupt_cache_is_rebuilt(toy_csv, tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), cache_dir=str(cache)).setup()
    (file,) = (cache / "tokenized").glob("*.pt")
    good = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), cache_dir=str(cache))
    good.setup()
    file.write_bytes(file.read_bytes()[:100])  # a crash mid-write would look like this without the atomic rename
    rebuilt = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), cache_dir=str(cache))
    rebuilt.setup()
    assert torch.equal(rebuilt.splits["val"].ids, good.splits["val"].ids)
    assert tokenize.load_cache(file, "another key") is None  # a stale key is never used either


def test_max_length_bounds(toy_csv, tiny_bert):
    with pytest.raises(UserError, match="below 8"):
        IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), max_length=4)
    with pytest.raises(UserError, match="above this model's limit of 512"):
        IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), max_length=1024).tokenizer


@pytest.mark.parametrize("grouped", [False, True])
def test_shuffled_train_whole_eval(toy_csv, tiny_bert, tmp_path, grouped):
    dm = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), batch_size=180, eval_batch_size=20, cache_dir=str(tmp_path), group_by_length=grouped)
    dm.setup()
    torch.manual_seed(0)
    order = next(iter(dm.train_dataloader()))["labels"]
    assert not torch.equal(order, dm.splits["train"].labels)  # shuffled
    val = next(iter(dm.val_dataloader()))["labels"]
    if grouped:  # by length, a different order of the same reviews
        assert sorted(dm.val_dataloader().sampler) == list(range(len(dm.splits["val"])))
    else:
        assert torch.equal(val, dm.splits["val"].labels)
    assert np.isclose(order.float().mean(), dm.splits["train"].labels.float().mean())
