"""Legality of test-time training (DESIGN.md §1, C1-C4), each rule checked on CPU with TTT on."""
import functools

import numpy as np
import pytest
import torch

import pgolf.ttt as ttt
from pgolf.bpb import byte_luts, count_doc_bytes
from pgolf.model import GPT, ModelConfig
from pgolf.ttt import TTTSettings, evaluate_documents
from pgolf.ttt_plan import chunk_passes, split_documents
from random_models import random_gpt

VOCAB, BOS = 64, 1
CPU = torch.device("cpu")
LUTS = ((np.arange(VOCAB) % 3).astype(np.int16), np.zeros(VOCAB, bool), np.zeros(VOCAB, bool))


@pytest.fixture
def settings(eval_defaults):
    """TTTSettings from the schema's defaults with LoRA and two global phases on, plus overrides."""
    def make(**overrides) -> TTTSettings:
        return TTTSettings.from_eval_cfg({**eval_defaults, "ttt_lora_rank": 4, "ttt_lr": 0.05, "ttt_chunk_tokens": 8,
                                          "ttt_batch_docs": 3, "ttt_phase_docs": [4, 8], "ttt_global_lr": 0.05,
                                          "ttt_global_batch_tokens": 48, **overrides})
    return make


tiny_model = functools.partial(random_gpt, VOCAB, 32)  # seed, arch: ModelConfig overrides, e.g. LOOPED


def doc_stream(seed: int = 0, num_docs: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = []
    for length in rng.integers(1, 40, num_docs):
        tokens += [BOS, *rng.integers(4, VOCAB, length)]
    return np.array(tokens, dtype=np.uint16)


def run(tokens, s: TTTSettings, token_nll=None, model=None) -> dict:
    return evaluate_documents(model or tiny_model(), tokens, LUTS, BOS, s, 16, CPU, token_nll=token_nll)


def perturb_doc(tokens: np.ndarray, doc) -> np.ndarray:
    out = tokens.copy()
    body = slice(doc.start + 1, doc.start + doc.num_targets)  # its own tokens; the next BOS stays
    out[body] = 4 + (out[body].astype(int) - 4 + 17) % (VOCAB - 4)
    return out


WITH_HEAD = {"ttt_lora_targets": ["q", "v", "mlp_fc", "head"]}  # the output head's adapter among the block ones
WARM_A = {"ttt_lora_warm_a": True}  # each row's A carried from document to document (the 1.0611 record's)
LOOPED = {"loop_layers": [1], "loop_repeats": 2}  # block 1 applied twice: schedule [0, 1, 1]
PER_PASS = {"ttt_lora_per_pass": True}  # with LOOPED: block 1's second pass has adapters of its own
# The 1.0611 record's adapters: parallel ones around the sublayers, the head's, per pass, warm A, scaled.
RECORD_TTT = {"ttt_lora_targets": ["q", "k", "v", "attn", "mlp", "head"], "ttt_lora_warm_a": True,
              "ttt_lora_per_pass": True, "ttt_lora_alpha": 7.2}


@pytest.mark.parametrize("form, arch", [({}, {}), ({"ttt_phase_order": "file", "ttt_global_on": "phase"}, {}),
                                        (WITH_HEAD, {}), (WARM_A, {}), (RECORD_TTT, LOOPED)])
@pytest.mark.parametrize("which", ["last", "middle"])
def test_perturbing_a_document_leaves_every_earlier_processed_document_unchanged(which, form, arch, settings):
    """C1/C3: a document's score depends only on documents processed before it (phases, LoRA on), in the
    1.0611 record's form and in the chunked form."""
    tokens = doc_stream()
    settings = functools.partial(settings, **form)
    base = run(tokens, settings(), model=tiny_model(**arch))["docs"]
    order = np.argsort(base["position"])
    target = order[-1] if which == "last" else order[5]  # position 5: the middle phase, after a global step
    docs = split_documents(tokens, BOS)
    changed = run(perturb_doc(tokens, docs[target]), settings(), model=tiny_model(**arch))["docs"]
    earlier = base["position"] < base["position"][target]
    assert earlier.sum() == base["position"][target] > 0
    np.testing.assert_array_equal(changed["nll_nats"][earlier], base["nll_nats"][earlier])
    assert changed["nll_nats"][target] != base["nll_nats"][target]


@pytest.mark.parametrize("form", [{}, WITH_HEAD, WARM_A])
def test_a_target_is_scored_before_any_update_on_it(form, settings):
    """C3 inside a document: changing token p changes no loss of a target before it, across chunks."""
    settings = functools.partial(settings, **form)
    tokens = doc_stream()
    docs = split_documents(tokens, BOS)
    long_doc = max(docs, key=lambda d: d.num_targets)
    assert long_doc.num_targets > 3 * 8, "needs several chunks"
    p = long_doc.start + 13  # inside chunk 1 (targets 8..15), not at its start
    changed = tokens.copy()
    changed[p] = 4 + (int(changed[p]) - 4 + 1) % (VOCAB - 4)
    before, after = {}, {}
    run(tokens, settings(), token_nll=before)
    run(changed, settings(), token_nll=after)
    k = p - long_doc.start - 1  # the target equal to token p; targets 0..k-1 come before it
    np.testing.assert_array_equal(after[long_doc.index][:k], before[long_doc.index][:k])
    assert after[long_doc.index][k + 1:] != before[long_doc.index][k + 1:]


def test_first_chunk_nll_is_the_full_softmax_of_the_artifact_model(settings):
    """C2: the scored NLL is -log_softmax over the whole vocabulary (first phase: the artifact's weights;
    first chunk: no adapter has stepped yet)."""
    tokens = doc_stream()
    token_nll = {}
    position = run(tokens, settings(), token_nll=token_nll)["docs"]["position"]
    model = tiny_model()
    first_phase = [d for d in split_documents(tokens, BOS) if position[d.index] < 4]
    assert len(first_phase) == 4
    for doc in first_phase:
        n = min(doc.num_targets, 8)
        x = torch.from_numpy(tokens[doc.start:doc.start + n].astype(np.int64))[None]
        y = torch.from_numpy(tokens[doc.start + 1:doc.start + 1 + n].astype(np.int64))
        with torch.no_grad():
            direct = -torch.log_softmax(model(x)[0].double(), dim=-1)[torch.arange(n), y]
        np.testing.assert_allclose(token_nll[doc.index][:n], direct.numpy(), rtol=1e-5, atol=1e-6)


def test_document_tokens_and_bytes_are_the_canonical_totals(tiny_corpus, settings):
    """C4 and §2: per-document token counts sum to the stream's targets, bytes to the decoded UTF-8 length."""
    import sentencepiece as spm

    from pgolf.shard_format import load_tokens, shard_paths

    sp = spm.SentencePieceProcessor(model_file=str(tiny_corpus.tokenizer_model))
    tokens = load_tokens(shard_paths(tiny_corpus.val_dir))
    luts = byte_luts(sp)
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_train_cfg(dict(num_layers=1, model_dim=16, num_heads=2, num_kv_heads=1, mlp_mult=2,
                                                rope_base=1e4, logit_softcap=30.0, seq_len=32), sp.vocab_size()))
    out = evaluate_documents(model, tokens, luts, sp.bos_id(), settings(ttt_batch_docs=8, ttt_chunk_tokens=32), 64, CPU)
    table = out["docs"]
    assert len(table["doc_index"]) == tiny_corpus.num_val_docs
    assert table["tokens"].sum() == out["scored_tokens"] == tokens.size - 1
    decoded = sum(len(sp.decode(d.tolist()).encode("utf-8")) for d in np.split(tokens, np.flatnonzero(tokens == BOS)[1:]))
    assert table["bytes"].sum() == out["scored_bytes"] == decoded == count_doc_bytes(tokens, luts)
    assert sorted(table["position"]) == list(range(tiny_corpus.num_val_docs))


def test_warm_up_sees_no_validation_token(monkeypatch, settings):
    """The warm-up's inputs are the same whatever the validation data: it cannot have seen any of it."""
    seen, recording = [], [False]
    real_warm_up = ttt.warm_up

    def spying_warm_up(model, *args, **kwargs):
        recording[0] = True
        forward = model.hidden_states
        model.hidden_states = lambda ids: (seen[-1].append(ids.clone()), forward(ids))[1]
        try:
            return real_warm_up(model, *args, **kwargs)
        finally:
            del model.hidden_states
            recording[0] = False

    monkeypatch.setattr(ttt, "warm_up", spying_warm_up)
    for seed in (0, 1):
        seen.append([])
        run(doc_stream(seed), settings())
    assert len(seen[0]) > 0, "the warm-up ran no forward"
    assert len(seen[0]) == len(seen[1])
    for a, b in zip(*seen):
        assert torch.equal(a, b)


@pytest.mark.parametrize("form, arch", [({}, {}), (WITH_HEAD, {}), ({"ttt_lora_targets": ["head"]}, {}),
                                        ({**PER_PASS, "ttt_lora_targets": ["q", "attn", "mlp"]}, LOOPED)])
def test_a_documents_nll_does_not_depend_on_its_batch(form, arch, settings):
    """Batched scoring (longest first, a finished row kept beside the longest: running_rows) gives each
    document what it gets scored alone: rows share no adapter, no score and no step."""
    settings = functools.partial(settings, **form)
    tokens = doc_stream(seed=4)
    alone = run(tokens, settings(ttt_batch_docs=1, ttt_phase_docs=[]), model=tiny_model(**arch))["docs"]
    batched = run(tokens, settings(ttt_batch_docs=4, ttt_phase_docs=[]), model=tiny_model(**arch))["docs"]
    np.testing.assert_array_equal(batched["tokens"], alone["tokens"])
    np.testing.assert_array_equal(batched["bytes"], alone["bytes"])
    np.testing.assert_allclose(batched["nll_nats"], alone["nll_nats"], rtol=1e-5, atol=1e-6)


def test_settings_name_missing_keys():
    with pytest.raises(KeyError, match="eval.ttt_lora_rank"):
        TTTSettings.from_eval_cfg({"seq_len": 64})


@pytest.mark.parametrize("global_on", ["scored", "phase"])
def test_each_global_phase_trains_on_what_global_on_says(global_on, monkeypatch, settings):
    """scored (the 1.0611 record): after phase k, SGD over the documents of phases 1..k; phase (the chunked
    form): over phase k alone. Either way only documents already scored, in processing order."""
    import pgolf.ttt_global

    trained = []
    monkeypatch.setattr(pgolf.ttt_global, "global_sgd", lambda model, stream, scored, *args: trained.append(scored))
    out = run(doc_stream(), settings(ttt_phase_docs=[4, 8], ttt_global_on=global_on))
    by_position = list(np.array(out["docs"]["doc_index"])[np.argsort(out["docs"]["position"])])
    expected = [by_position[:4], by_position[:8]] if global_on == "scored" else [by_position[:4], by_position[4:8]]
    assert [[d.index for d in docs] for docs in trained] == expected


def test_phase_cuts_beyond_the_documents_are_reported(settings, caplog):
    with caplog.at_level("WARNING", logger="pgolf.ttt"):
        run(doc_stream(), settings(ttt_phase_docs=[4, 500]))
    assert "only cuts inside 1..10 documents apply (2 phase(s))" in caplog.text


# -----------------------------------------------------------------------------------------------
# The compiled path (eval.compile on CUDA): torch.compile with dynamic shapes. Inductor needs a C++
# toolchain, so CPU tests use the "aot_eager" backend (AOTAutograd's forward and backward graphs, run
# eagerly) or a counting backend that runs dynamo's captured graph as it is.


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("lora, arch", [({"ttt_lora_rank": 4}, {}), ({"ttt_lora_rank": 0}, {}),
                                        ({"ttt_lora_rank": 4, **WITH_HEAD}, {}), ({"ttt_lora_rank": 4, **RECORD_TTT}, LOOPED)])
def test_compiled_ttt_gives_the_plain_per_document_nlls(lora, arch, settings, fresh_dynamo):
    """LoRA (or none) and global phases: the compiled forward gives each document the plain path's NLL
    (per-pass adapters: their pass counters traced, not frozen into the graph)."""
    tokens, s = doc_stream(), settings(**lora)
    plain = run(tokens, s, model=tiny_model(**arch))["docs"]
    compiled = evaluate_documents(tiny_model(**arch), tokens, LUTS, BOS, s, 16, CPU,
                                  compile_backend="aot_eager")["docs"]
    np.testing.assert_array_equal(compiled["position"], plain["position"])
    np.testing.assert_array_equal(compiled["bytes"], plain["bytes"])
    np.testing.assert_allclose(compiled["nll_nats"], plain["nll_nats"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lora, arch", [({"ttt_lora_rank": 4}, {}), ({"ttt_lora_rank": 0}, {}),
                                        ({"ttt_lora_rank": 4, **RECORD_TTT}, LOOPED)])
def test_compiled_ttt_compiles_only_in_the_warm_up(lora, arch, monkeypatch, settings, fresh_dynamo):
    """Ragged documents give every chunk its own [rows, width]; dynamic shapes and a warm-up that covers
    one and many rows, adapters on and off, leave nothing to compile while validation tokens are scored."""
    graphs, after_warm_up = [], []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real_warm_up = ttt.warm_up

    def noting_warm_up(*args, **kwargs):
        real_warm_up(*args, **kwargs)
        after_warm_up.append(len(graphs))

    monkeypatch.setattr(ttt, "warm_up", noting_warm_up)
    tokens = doc_stream(seed=3, num_docs=15)
    out = evaluate_documents(tiny_model(**arch), tokens, LUTS, BOS, settings(**lora), 16, CPU,
                             compile_backend=counting_backend)
    assert after_warm_up == [len(graphs)], "graphs compiled while scoring validation documents"
    assert out["compiled_graphs"] == {"warm_up": len(graphs), "scoring": 0}
    assert 0 < len(graphs) <= 2  # scoring with several rows and with one (a batch of one document); global steps eager


def test_chunk_passes_count_the_scoring_loops_passes(settings, monkeypatch):
    """pgolf.ttt_plan.chunk_passes (the eval-time projection's unit) is the number of chunk forwards scoring makes."""
    tokens, s = doc_stream(), settings(ttt_warmup_batches=0, ttt_steps=1)
    calls = []
    real = ttt._chunk_losses
    monkeypatch.setattr(ttt, "_chunk_losses", lambda *a: calls.append(1) or real(*a))
    run(tokens, s)
    docs = split_documents(tokens, BOS)
    assert len(calls) == chunk_passes(docs, s.ttt_phase_docs, s.ttt_phase_order, s.ttt_batch_docs,
                                      s.ttt_chunk_tokens, 1) > len(docs)


def test_the_head_adapter_adapts_each_document_on_its_scored_chunks(settings):
    """With adapters on the output head alone, TTT changes the scores after a document's first chunk (it is
    on the scoring path and trained) and not the first chunk's (scored before any step)."""
    tokens = doc_stream()
    plain, adapted = {}, {}
    run(tokens, settings(ttt_phase_docs=[], ttt_lora_rank=0), token_nll=plain)
    run(tokens, settings(ttt_phase_docs=[], ttt_lora_targets=["head"]), token_nll=adapted)
    long_doc = max(split_documents(tokens, BOS), key=lambda d: d.num_targets)
    np.testing.assert_allclose(adapted[long_doc.index][:8], plain[long_doc.index][:8], rtol=1e-5, atol=1e-6)
    assert not np.allclose(adapted[long_doc.index][8:], plain[long_doc.index][8:], atol=1e-4)


def test_warm_a_carries_a_rows_training_to_its_next_document_until_a_global_phase(monkeypatch, settings):
    """ttt_lora_warm_a: one document per batch, so each document follows the one before it in the same row.
    The first document scores as without it (the warm-up's random documents leave no trace in A), later
    ones differ (A carries over); after a global phase A starts over, so the phase's first document again
    scores as without it (global SGD made a no-op here, to compare the adapters alone)."""
    import pgolf.ttt_global

    monkeypatch.setattr(pgolf.ttt_global, "global_sgd", lambda *args: None)
    tokens = doc_stream(seed=2)
    scores = {}
    for warm in (False, True):
        docs = run(tokens, settings(ttt_batch_docs=1, ttt_phase_docs=[5], ttt_lora_warm_a=warm))["docs"]
        order = np.argsort(docs["position"])
        scores[warm] = np.asarray(docs["nll_nats"])[order]
    np.testing.assert_allclose(scores[True][[0, 5]], scores[False][[0, 5]], rtol=1e-6)
    assert not np.allclose(scores[True][1:5], scores[False][1:5], rtol=1e-4)
    assert not np.allclose(scores[True][6:], scores[False][6:], rtol=1e-4)


@pytest.mark.parametrize("eps, step_fraction", [(1e-10, 0.99), (1e-8, 0.5)])
def test_adam_eps_sets_how_far_a_tiny_gradient_moves_an_adapter(eps, step_fraction, settings):
    """AdamW's first step (β1 = 0) is lr · g / (|g| + eps): with gradients of 1e-8, as an adapter's A gets while
    its B is still near zero, PyTorch's default eps (1e-8) halves the step the record's 1e-10 takes."""
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = ttt._make_optimizer([weight], settings(ttt_eps=eps, ttt_beta1=0.0, ttt_weight_decay=0.0))
    weight.grad = torch.full((4,), 1e-8)
    optimizer.step()
    assert (-weight.detach() / 0.05).tolist() == pytest.approx([step_fraction] * 4, rel=0.01)
