"""What a harvest reads and counts: --filter-bos with every kind of tokenizer, HF dataset configs and split
slices (delphi's --dataset_repo/--dataset_name/--dataset_split), and one-line errors for a wrong split or
config, with the split recorded in config.json.

Tokenizers are built with the `tokenizers` library (word level, so every word is one known token), each paired
with a tiny random Llama of its vocabulary; datasets are local (parquet files with `configs:` in README.md,
and a `save_to_disk` DatasetDict) with texts that say where they came from, so a slice has a known answer.
"""

import json

import msgspec
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.core.errors import UserError, run_cli
from engine.core.schemas import RunConfig
from engine.harvest.data import iter_texts
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.run import main as harvest_main

datasets = pytest.importorskip("datasets")

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "came", "back", "home"]
SPECIAL = {  # tokenizer kind -> (bos, eos)
    "bos_and_eos": ("<s>", "</s>"),
    "eos_only": (None, "</s>"),
    "bos_is_eos": ("<|endoftext|>", "<|endoftext|>"),
    "neither": (None, None),
}
SMALL = ["--batch-size", "2", "--n-batches", "3", "--context-length", "12", "--top-k", "2", "--n-random", "2",
         "--window", "2", "--no-output-stats"]


def _tokenizer_and_model(kind: str, folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bos, eos = SPECIAL[kind]
    specials = sorted({t for t in (bos, eos) if t})
    vocab = {w: i for i, w in enumerate(["<unk>", *specials, *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token=bos, eos_token=eos)
    assert (tok.bos_token_id is None) == (bos is None) and (tok.eos_token_id is None) == (eos is None)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    p = tmp_path_factory.mktemp("docs") / "docs.txt"
    rng = np.random.default_rng(0)
    p.write_text("\n".join(" ".join(rng.choice(WORDS, size=rng.integers(2, 7))) for _ in range(60)))
    return p


@pytest.mark.parametrize("kind", list(SPECIAL))
def test_filter_bos_drops_exactly_the_inserted_start_token(tmp_path, docs, kind):
    tok = _tokenizer_and_model(kind, tmp_path / "model")
    out = tmp_path / "run"
    harvest_main([str(tmp_path / "model"), "neurons:16", "--hookpoints", "layers.0", "--dataset", str(docs),
                  "--out", str(out), *SMALL])
    rc = msgspec.json.decode((out / "harvest" / "config.json").read_bytes(), type=RunConfig)
    tokens = torch.from_numpy(np.fromfile(out / "harvest" / "tokens.bin", dtype=np.int32).reshape(6, 12).astype(np.int64))
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    # the brute force: the sequences as the text says, then what counts
    ids = []
    for line in docs.read_text().splitlines():
        ids += tok(line, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    body = 12 - (start is not None)
    want = [([start] if start is not None else []) + ids[i * body:(i + 1) * body] for i in range(6)]
    assert tokens.tolist() == want
    counted = tokens[:, 1:] if start is not None else tokens
    totals = load_file(str(out / "harvest" / "stats.safetensors"))["tok_total"]
    assert rc.n_tokens == counted.numel()
    assert torch.equal(totals[: len(tok)].long(), torch.bincount(counted.reshape(-1), minlength=len(tok)))
    if tok.eos_token_id is not None:  # end-of-document EOS count, also when it is the BOS token
        assert int(totals[tok.eos_token_id]) == int((counted == tok.eos_token_id).sum()) > 0


def _configs_folder(root):
    """A local dataset folder with two configs (wikitext's names) and two splits each, README.md metadata."""
    lines = ["---", "configs:"]
    for cfg in ("wikitext-2-raw-v1", "wikitext-103-raw-v1"):
        lines += [f"- config_name: {cfg}", "  data_files:"]
        for split in ("train", "validation"):
            (root / cfg).mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_dict({"text": [f"{cfg} {split} doc {i}" for i in range(20)]}).to_parquet(root / cfg / f"{split}.parquet")
            lines += [f"  - split: {split}", f"    path: {cfg}/{split}.parquet"]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


@pytest.fixture(scope="module")
def local_datasets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("datasets")
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp / "cache"))  # load_dataset's copies stay in tmp
    saved = tmp / "saved"
    datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": [f"saved {s} doc {i}" for i in range(40)]})
                          for s in ("train", "test")}).save_to_disk(str(saved))
    yield _configs_folder(tmp / "wikitext"), saved
    mp.undo()


@pytest.mark.parametrize("name, split, want", [
    ("wikitext-103-raw-v1", "train[:10%]", ["wikitext-103-raw-v1 train doc 0", "wikitext-103-raw-v1 train doc 1"]),
    ("wikitext-2-raw-v1", "validation[17:]", [f"wikitext-2-raw-v1 validation doc {i}" for i in (17, 18, 19)]),
    ("wikitext-2-raw-v1", "train[-5%:]", ["wikitext-2-raw-v1 train doc 19"]),
])
def test_dataset_config_and_split_slice(local_datasets, name, split, want):
    folder, _ = local_datasets
    assert list(iter_texts(str(folder), split=split, name=name)) == want


@pytest.mark.parametrize("split, want", [
    ("train[:5%]", ["saved train doc 0", "saved train doc 1"]),
    ("test[10:13]", ["saved test doc 10", "saved test doc 11", "saved test doc 12"]),
    ("test[38:]+train[:1]", ["saved test doc 38", "saved test doc 39", "saved train doc 0"]),
])
def test_save_to_disk_split_slices(local_datasets, split, want):
    _, saved = local_datasets
    assert list(iter_texts(str(saved), split=split)) == want


@pytest.mark.parametrize("which, name, split, says", [
    (0, "wikitext-103-raw-v1", "test", "has no split 'test' (splits: train, validation) -- pass --dataset-split"),
    (1, None, "validation[:10%]", "has no split 'validation' (splits: train, test) -- pass --dataset-split"),
    (0, "wikitext-3", "train", "has no config 'wikitext-3' (configs: wikitext-2-raw-v1, wikitext-103-raw-v1) -- pass --dataset-name"),
    (0, None, "train", "needs a config (configs: wikitext-2-raw-v1, wikitext-103-raw-v1) -- pass --dataset-name"),
    (1, None, "train[:x]", "is not a split spec"),
    (1, "wikitext-2-raw-v1", "train", "is a save_to_disk folder, which has no configs"),
])
def test_wrong_split_or_config_lists_what_there_is(local_datasets, which, name, split, says):
    with pytest.raises(UserError) as e:
        list(iter_texts(str(local_datasets[which]), split=split, name=name))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_cli_records_dataset_config_and_split(local_datasets, tmp_path, capsys):
    folder, _ = local_datasets
    out = tmp_path / "run"
    tiny = ["--batch-size", "1", "--n-batches", "1", "--context-length", "8", "--top-k", "2", "--n-random", "2",
            "--window", "2", "--no-output-stats"]
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset_repo", str(folder), "--dataset_name", "wikitext-103-raw-v1",
                  "--dataset_split", "train[:50%]", "--out", str(out), *tiny])
    rc = json.loads((out / "harvest" / "config.json").read_text())
    assert (rc["dataset"], rc["dataset_name"], rc["dataset_split"]) == (str(folder), "wikitext-103-raw-v1", "train[:50%]")
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(tmp_path / "jsonl"), *tiny])
    rc = json.loads((tmp_path / "jsonl" / "harvest" / "config.json").read_text())
    assert (rc["dataset_name"], rc["dataset_split"]) == (None, None)  # a jsonl file has no splits
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(harvest_main, [DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(folder), "--dataset-name", "wikitext-2-raw-v1",
                               "--dataset-split", "tset", "--out", str(tmp_path / "bad"), *tiny])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == [f"error: dataset {folder} has no split 'tset' (splits: train, validation) -- pass --dataset-split"]
    assert not (tmp_path / "bad").exists()  # refused before the model loads or anything is written
