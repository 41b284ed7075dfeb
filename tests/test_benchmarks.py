"""Smoke test of the benchmark script (benchmarks/run_benchmarks.py), so that it cannot rot: every section on the
tiny model with one or two steps, in-process memory measurement. Figures are not checked (a shared CI machine)."""

import json
import math
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def run_benchmarks():
    sys.path.insert(0, BENCHMARKS)
    try:
        import run_benchmarks

        yield run_benchmarks
    finally:
        sys.path.remove(BENCHMARKS)


def test_benchmark_smoke_tiny(run_benchmarks, tmp_path):
    pytest.importorskip("accelerate")  # the library trainer (fast path) needs it
    out = tmp_path / "bench"
    results = run_benchmarks.main([
        "--model", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--memory", "inprocess",
        "--full_call_steps", "2", "--full_call_rounds", "1", "--inference_repeats", "1", "--load_repeats", "1",
        "--scaling_batch_sizes", "1,2", "--scaling_resolutions", "32", "--scaling_tokens", "1,4",
        "--scaling_steps", "1", "--scaling_warmup", "0", "--output_dir", str(out),
    ])
    assert (out / "results.md").is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk) >= {"environment", "model", "settings", "train", "memory", "inference", "load", "scaling",
                            "targets"}

    train = results["train"]["variants"]
    assert set(train) == {"ti", "naive", "fast", "floor"}
    for name, variant in train.items():
        assert variant["n"] == 1 and variant["median_s"] > 0, name
        assert variant["losses_finite"], name
    # CatVersion trains 3 layers x (key, value) x 1 token x hidden size; TI's optimizer holds the whole table.
    hidden = results["model"]["hidden_size"]
    assert train["fast"]["trainable_values"] == train["naive"]["trainable_values"] == 6 * hidden
    assert train["ti"]["trainable_values"] == (results["model"]["vocab_size"] + 1) * hidden
    assert all(math.isfinite(v) for v in results["train"]["ratios"].values())

    memory = results["memory"]["variants"]
    assert set(memory) == {"ti", "naive", "fast", "floor"}
    assert all(m["peak_bytes"] > 0 for m in memory.values())

    inference = results["inference"]
    assert set(inference["encode_prompt"]) == {"stock", "0 (load+unload)", "1 concept", "4 concepts"}
    assert inference["stock_modules_restored_after_unload"]
    assert set(inference["full_call"]["variants"]) == set(inference["encode_prompt"])

    load = results["load"]
    assert all(load["restored"].values())
    assert load["warm"]["catversion load"]["median"] > 0 and load["warm"]["ti load"]["median"] > 0

    rows = results["scaling"]["rows"]
    assert {(r["axis"], r["batch_size"], r["num_tokens"]) for r in rows} >= {("batch_size", 2, 1), ("num_tokens", 1, 4)}
    assert any(t["target"].startswith("load of a residual file") for t in results["targets"])
    assert "## Training step" in (out / "results.md").read_text()


def test_sd15_tokenizer_has_the_real_vocabulary_size(run_benchmarks, tmp_path):
    from models import SD15_VOCAB_SIZE, _padded_words

    from catversion_diffusers.testing import write_clip_tokenizer_files

    write_clip_tokenizer_files(str(tmp_path), _padded_words(SD15_VOCAB_SIZE))
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert len(vocab) == SD15_VOCAB_SIZE
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407  # as in SD1.5's tokenizer
