"""The family matrix: every model family the README names, on tiny random configs, under NF4 and unquantized.

For each family (tiny_models.FAMILIES: Llama, Qwen2, Qwen3, Mistral, Gemma2, Gemma3 text, Gemma3 multimodal):
targets are the text decoder's layers only; the fused routed forward equals the loop reference; the engine's batched
rows equal solo runs (prompts longer than the sliding window included); a bundle round-trips; `brainstacks train`
trains one domain (NF4 only: the quantization recipes default to; NF4 and none differ only in the base layer, which
the other checks cover). Family-specific behaviour that changes outputs: Gemma's embedding scaling and logit
soft-capping survive wrapping exactly, sliding-window layers are exact under the engine's full caches, and each
family's chat template ends a turn with a token the server stops on and training learns.
"""

from __future__ import annotations

import json
import logging
import math
import random

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from brainstacks.base import (
    DIGEST_KEYS,
    check_architecture,
    compute_fingerprint,
    fingerprint_mismatches,
    load_base,
    target_modules,
)
from brainstacks.bundle import (
    DomainEntry,
    Manifest,
    install_stacks,
    load_bundle,
    read_manifest,
    save_router,
    save_stack,
    write_manifest,
)
from brainstacks.config import TARGETS, RouterConfig, StackConfig
from brainstacks.errors import UnsupportedArchitecture
from brainstacks.reference import reference_forward
from brainstacks.router import MetaRouter, route
from brainstacks.stacks import StackedModel
from brainstacks.text import encode_prompt, eos_token_ids, render_chat
from brainstacks.tiny_models import END_OF_TURN, FAMILIES, SLIDING_WINDOW, SOFTCAP, add_random_stacks, tiny_base

GEMMAS = ("gemma2", "gemma3", "gemma3_mm")
SLIDING = ("mistral", "gemma2", "gemma3", "gemma3_mm")
LAYERS = {f: "model.language_model.layers" if f == "gemma3_mm" else "model.layers" for f in FAMILIES}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on 2 shared cores: one thread is several times faster than two fighting for them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: tiny_base(root / f, family=f, instruct=True) for f in FAMILIES}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def prompt_ids(tok, n_words: int, seed: int) -> list[int]:
    r = random.Random(seed)
    words = "the patient dose is mg per kg what is the sum of and plus code return value".split()
    return encode_prompt(tok, " ".join(r.choice(words) for _ in range(n_words)))


# ---------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("family", FAMILIES)
def test_targets_are_the_text_decoder_layers_only(family_dirs, family, caplog):
    with caplog.at_level(logging.WARNING, logger="brainstacks.base"):
        lb = load_base(family_dirs[family], quantize="nf4")
    fp = lb.fingerprint
    said = " ".join(r.getMessage() for r in caplog.records if r.name == "brainstacks.base")
    assert fp["layers"] == LAYERS[family] and len(fp["targets"]) == 2 * 7
    assert all(p.startswith(LAYERS[family] + ".") for p in fp["targets"])
    assert all(isinstance(lb.model.get_submodule(p), bnb.nn.Linear4bit) for p in fp["targets"])  # NF4 where wrapped
    assert fp["family"] == ("gemma3_text" if family.startswith("gemma3") else family)
    assert fp["architectures"][0] == type(lb.model).__name__
    named = [p for p, m in lb.model.named_modules() if p.rsplit(".", 1)[-1] in TARGETS]
    if family == "gemma3_mm":
        vision = [p for p in named if p.startswith("model.vision_tower.")]
        assert vision and not set(vision) & set(fp["targets"])  # SigLIP's q/k/v_proj share the names, not the role
        assert lb.skipped == ("model.vision_tower", "model.multi_modal_projector") and fp["skipped"] == list(lb.skipped)
        assert "text" in said and "left untouched: model.vision_tower, model.multi_modal_projector" in said
        assert all(type(lb.model.get_submodule(p)) is nn.Linear for p in vision)  # not quantized
        sm = StackedModel(lb.model, StackConfig(rank=4))
        assert set(sm.layers) == set(fp["targets"])  # nor wrapped
        assert all(type(lb.model.get_submodule(p)) is nn.Linear for p in vision)
    else:
        assert set(named) == set(fp["targets"]) and lb.skipped == () and not said


def test_unsupported_architectures_are_refused_before_weights_are_read(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, Phi3Config, Phi3ForCausalLM

    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256)).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "model.safetensors").write_bytes(b"not weights")  # never read: refused from config.json
    with pytest.raises(UnsupportedArchitecture, match=r"GPT2LMHeadModel \(model_type 'gpt2'\).*no `layers`.*"
                                                     r"q_proj/k_proj.*c_attn', 'c_fc', 'c_proj"):
        load_base(tmp_path / "gpt2", quantize="nf4")
    phi = Phi3ForCausalLM(Phi3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    with pytest.raises(UnsupportedArchitecture, match=r"Phi3ForCausalLM.*model.layers.0 has no \['q_proj', 'k_proj', "
                                                     r"'v_proj', 'gate_proj', 'up_proj'\].*gate_up_proj.*qkv_proj"):
        check_architecture(phi)
    assert target_modules(GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=4))) == {}


def test_train_refuses_an_unsupported_base_with_a_message(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from brainstacks.tiny_models import tiny_tokenizer
    from brainstacks_cli.main import main as cli

    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256)).save_pretrained(tmp_path / "gpt2")
    tiny_tokenizer().save_pretrained(tmp_path / "gpt2")
    recipe = _chat_recipe(tmp_path, tmp_path / "gpt2", "nf4")
    assert cli(["train", "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "GPT2LMHeadModel (model_type 'gpt2') is not supported" in err and "c_attn" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_shipped_demo_manifest_still_validates():
    """The family fields are outside the digest: a Llama fingerprint (here SmolLM2-135M's shapes, on a weightless
    skeleton) keeps the shipped bundle's digest and matches its manifest."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from brainstacks.demo import DEMO_BUNDLE

    m = read_manifest(DEMO_BUNDLE)
    # as a manifest written before the descriptive fields existed holds it (the shipped one may already carry them)
    old = {k: v for k, v in m.base["fingerprint"].items() if k not in ("family", "layers", "skipped")}
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        fp = compute_fingerprint(LlamaForCausalLM(cfg))
    assert fp["digest"] == old["digest"] and fingerprint_mismatches(old, fp) == []
    assert {k: fp[k] for k in DIGEST_KEYS} == {k: old[k] for k in DIGEST_KEYS}
    assert fp["family"] == "llama" and fp["layers"] == "model.layers" and fp["skipped"] == []


# ---------------------------------------------------------------------------------------------- the matrix
def _runner(lb, sm):
    from server.runner import ModelRunner

    return ModelRunner(lb.model, lb.tokenizer, stacked=sm)


def _engine_tokens(runner, reqs, max_batch):
    """Run (prompt, max_tokens, weights) requests through one engine; staggered joins; tokens and logprobs each."""
    from server.engine import Engine
    from server.genrequest import GenRequest
    from server.sampling import SamplingParams

    eng = Engine(runner, max_batch=max_batch, max_waiting=16)
    eng.start(background=False)
    events: list[list] = [[] for _ in reqs]
    peak = 0
    for i, (ids, n, w) in enumerate(reqs):
        eng.submit(GenRequest(f"r{i}", ids, SamplingParams(max_tokens=n, temperature=0.0, logprobs=1),
                              events[i].append, weights=w))
        eng.step()
        peak = max(peak, eng.running_rows)
    for _ in range(500):
        if not eng.running_rows and not eng.waiting_rows:
            break
        eng.step()
        peak = max(peak, eng.running_rows)
    out = [([e.token_id for e in ev if e.kind == "token"], [e.logprob for e in ev if e.kind == "token"])
           for ev in events]
    return out, peak


@pytest.mark.parametrize("quantize", ["nf4", "none"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_matrix(family_dirs, family, quantize, tmp_path):
    """Fused = reference; bundle round trip (stacks, router, logits); engine batched = solo, with prompts longer
    than the sliding window. All on one loaded base per (family, quantization)."""
    torch.manual_seed(0)
    lb = load_base(family_dirs[family], quantize=quantize)
    cfg = StackConfig(rank=4, experts=2, top_k=1, frozen_dtype="float32")
    sm = StackedModel(lb.model, cfg)
    add_random_stacks(sm, {"a": 2, "b": 1}, seed=3, dtype="float32")
    ids = torch.randint(4, 140, (3, 7))
    w = torch.tensor([[1.0, 0.0], [0.3, 0.8], [0.0, 0.0]])
    # 1. the fused forward equals the loop over stacks, and the stacks contribute
    with torch.no_grad(), sm.routing(w):
        fused = lb.model(ids).logits
        with reference_forward(sm):
            ref = lb.model(ids).logits
    with torch.no_grad(), sm.base_only():
        base = lb.model(ids).logits
    assert rel_err(fused, ref) <= 1e-4
    assert not torch.allclose(fused[:2], base[:2], atol=1e-3)
    torch.testing.assert_close(fused[2], base[2], rtol=0, atol=1e-6)  # all-zero weights: the base exactly

    # 2. a bundle round trip: same stacks, router d_model, same logits from a fresh load
    bdir = tmp_path / "bundle"
    entries = [DomainEntry(d, [save_stack(bdir, d, k, sm.stack_tensors(d, k)) for k in range(sm.num_stacks(d))])
               for d in sm.domains]
    router = MetaRouter(lb.fingerprint["hidden_size"], sm.domains, RouterConfig(hidden=16, mlp_hidden=16))
    write_manifest(bdir, Manifest(version=1, base={"path": str(family_dirs[family]), "fingerprint": lb.fingerprint},
                                  stack_config=cfg.to_dict(), domains=entries, router=save_router(bdir, router)))
    assert json.loads((bdir / "manifest.json").read_text())["base"]["fingerprint"]["layers"] == LAYERS[family]
    back = load_bundle(bdir, quantize=quantize)
    assert back.stacked.stacks == sm.stacks and set(back.stacked.layers) == set(sm.layers)
    for d, k in sm.stacks:
        a, b = sm.stack_tensors(d, k), back.stacked.stack_tensors(d, k)
        assert all(torch.equal(a[n], b[n]) for n in a)
    # the same tensors installed from memory into a fresh base (under NF4, a twin whose 4-bit kernel has the same
    # layout: `sm` trained a stack, which switched its layers to the autograd-safe one, ~1e-3 apart; enough to flip
    # a top-1 expert choice)
    twin = StackedModel(load_base(family_dirs[family], quantize=quantize).model, cfg)
    install_stacks(twin, {d: [(sm.stack_tensors(d, k), {}) for k in range(sm.num_stacks(d))] for d in sm.domains})
    with torch.no_grad(), back.stacked.routing(w), twin.routing(w):
        loaded = back.base.model(ids).logits
        assert torch.equal(loaded, twin.model(ids).logits)
    if quantize == "none":
        torch.testing.assert_close(loaded, fused, rtol=0, atol=1e-5)
    rw = route(back.stacked, back.router, ids)  # the router reads the text decoder's hidden states
    assert rw.shape == (3, 2) and torch.isfinite(rw).all()
    del back, twin

    # 3. the engine: rows batched together (joining at different steps, each with its own weights) equal solo runs
    with torch.no_grad():
        lb.model.get_output_embeddings().weight.mul_(20.0)  # well-separated greedy choices
    runner = _runner(lb, sm)
    long = SLIDING_WINDOW + 9
    reqs = [(prompt_ids(lb.tokenizer, long, 1), 6, {"a": 1.0}), (prompt_ids(lb.tokenizer, 3, 2), 8, {"b": 0.7}),
            (prompt_ids(lb.tokenizer, long - 4, 3), 5, {"a": 0.4, "b": 1.0}), (prompt_ids(lb.tokenizer, 5, 4), 4, {})]
    assert len(reqs[0][0]) > SLIDING_WINDOW
    batched, peak = _engine_tokens(runner, reqs, max_batch=3)
    assert peak >= 2, "the rows must actually share decode steps"
    for i, r in enumerate(reqs):
        (alone,), _ = _engine_tokens(runner, [r], max_batch=1)
        assert batched[i][0] == alone[0] and len(alone[0]) == r[1], f"{family}/{quantize} request {i}"
        torch.testing.assert_close(torch.tensor(batched[i][1]), torch.tensor(alone[1]), rtol=0, atol=1e-4)


def _chat_recipe(root, base, quantize: str):
    from tests.toy_recipes import TOY_DOMAINS, write_toy_recipe

    r = random.Random(0)
    rows = []
    for _ in range(32):
        p, c = TOY_DOMAINS["math"](r)
        rows.append(json.dumps({"messages": [{"role": "system", "content": "answer with a number"},
                                             {"role": "user", "content": p}, {"role": "assistant", "content": c}]}))
    recipe = write_toy_recipe(root, base, ["math"], steps_per_round=4, max_rounds=1, eval_every=4, batch_size=4,
                              seq_len=48)
    (root / "math.jsonl").write_text("\n".join(rows) + "\n")
    text = recipe.read_text().replace('format = "prompt_completion"', 'format = "messages"')
    text = text.replace("[router]\nenabled = true", "[router]\nenabled = false")  # one domain: nothing to route
    recipe.write_text(text.replace('quantize = "nf4"', f'quantize = "{quantize}"'))
    return recipe


@pytest.mark.parametrize("family", FAMILIES)
def test_train_one_domain(family_dirs, family, tmp_path):
    """`brainstacks train` on chat data in the family's template (system turn included): a bundle whose stack
    lowers the validation loss and serves on the same base; a multimodal base's vision tower stays as it was."""
    from brainstacks_cli.main import main as cli

    out = tmp_path / "bundle"
    assert cli(["train", "--recipe", str(_chat_recipe(tmp_path, family_dirs[family], "nf4")), "--out", str(out),
                "--quiet"]) == 0
    m = read_manifest(out)
    assert m.domain_names == ["math"] and m.base["fingerprint"]["layers"] == LAYERS[family]
    report = json.loads((out / "reports" / "train_math.json").read_text())
    assert report["val_after"] < report["val_before"]
    b = load_bundle(out, quantize="nf4")
    assert set(b.stacked.layers) == set(b.base.fingerprint["targets"])
    if family == "gemma3_mm":
        from transformers import AutoModelForCausalLM

        plain = dict(AutoModelForCausalLM.from_pretrained(str(family_dirs[family])).named_parameters())
        tower = {n: p for n, p in b.base.model.named_parameters() if n.startswith("model.vision_tower.")}
        assert tower and all(torch.equal(p, plain[n]) for n, p in tower.items())


# ---------------------------------------------------------------------------------------------- model-specific
@pytest.mark.parametrize("family", FAMILIES)
def test_wrapped_with_zero_weights_equals_the_plain_model(family_dirs, family):
    """Stacks at weight 0 give exactly the logits of the plain transformers model loaded on its own: nothing the
    family does (Gemma: embeddings scaled by sqrt(hidden), final logits soft-capped) is lost by wrapping."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(family_dirs[family]), dtype=torch.float32).eval()
    lb = load_base(family_dirs[family], quantize="none")
    with torch.no_grad():  # the same large head in both, so the cap is reached
        for m in (plain, lb.model):
            m.get_output_embeddings().weight.mul_(200.0)
    sm = StackedModel(lb.model, StackConfig(rank=4, frozen_dtype="float32"))
    add_random_stacks(sm, {"a": 1, "b": 1}, dtype="float32")
    ids = torch.tensor([prompt_ids(lb.tokenizer, 12, 5)])
    with torch.no_grad():
        want = plain(ids, output_hidden_states=True)
        with sm.routing(torch.zeros(1, 2)):
            got = lb.model(ids).logits
    assert torch.equal(got, want.logits)
    if family not in GEMMAS:
        return
    emb = plain.get_input_embeddings()
    hidden = plain.config.get_text_config().hidden_size
    torch.testing.assert_close(want.hidden_states[0], emb.weight[ids] * math.sqrt(hidden), rtol=1e-6, atol=0)
    raw = plain.get_output_embeddings()(want.hidden_states[-1])  # the head without the cap
    assert raw.abs().max() > 2 * SOFTCAP
    if family == "gemma3_mm":  # transformers caps only in Gemma3ForCausalLM (released Gemma 3 configs set no cap)
        torch.testing.assert_close(want.logits, raw, rtol=1e-5, atol=1e-5)
    else:
        assert want.logits.abs().max() <= SOFTCAP
        torch.testing.assert_close(want.logits, torch.tanh(raw / SOFTCAP) * SOFTCAP, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_sliding_window_is_exact_under_full_caches(family_dirs, family):
    """The engine gives every layer a full-attention cache; the model's sliding-window mask still limits what a
    sliding layer sees. A prompt of 3 windows, decoded past 4: the engine equals recomputing the whole sequence
    without a cache at every step, and differs from the same weights with the window disabled (so the window is
    really applied). The cost: sliding layers keep all T positions instead of the last W (memory, and decode
    attention over T keys, masked)."""
    from transformers import AutoModelForCausalLM

    lb = load_base(family_dirs[family], quantize="none")
    with torch.no_grad():
        lb.model.get_output_embeddings().weight.mul_(20.0)
    prompt = prompt_ids(lb.tokenizer, 3 * SLIDING_WINDOW, 7)
    (got,), _ = _engine_tokens(_runner(lb, None), [(prompt, SLIDING_WINDOW + 4, None)], max_batch=1)
    seq, logps = list(prompt), []
    with torch.no_grad():
        for _ in range(SLIDING_WINDOW + 4):  # the reference: full recompute, the model's own masks, no cache
            lp = torch.log_softmax(lb.model(torch.tensor([seq])).logits[0, -1].float(), -1)
            seq.append(int(lp.argmax()))
            logps.append(float(lp.max()))
    assert got[0] == seq[len(prompt):]
    torch.testing.assert_close(torch.tensor(got[1]), torch.tensor(logps), rtol=0, atol=1e-4)
    wide = AutoModelForCausalLM.from_pretrained(str(family_dirs[family]), sliding_window=4096).eval()
    with torch.no_grad():
        wide.get_output_embeddings().weight.mul_(20.0)
        full = wide(torch.tensor([seq])).logits[0, -1]
        windowed = lb.model(torch.tensor([seq])).logits[0, -1]
    assert not torch.allclose(full, windowed, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_and_end_of_turn(family_dirs, family):
    """Each family's template renders the conversation (system turn folded in where the family has none), BOS
    appears once, and the token that ends an assistant turn is both learned (in the answer labels) and a stop token
    of the server (tokenizer eos, config or generation_config.json)."""
    from training.tokenization import IGNORE_INDEX, tokenize_sft

    lb = load_base(family_dirs[family], quantize="none")
    tok = lb.tokenizer
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2 plus 3 ?"}]
    text = render_chat(tok, msgs, add_generation_prompt=True)
    assert "be brief" in text and "what is 2 plus 3 ?" in text
    gen_prefix = {"llama": "<|start_header_id|>assistant<|end_header_id|>\n\n", "qwen2": "<|im_start|>assistant\n",
                  "qwen3": "<|im_start|>assistant\n", "mistral": " [/INST]"}.get(family, "<start_of_turn>model\n")
    assert text.endswith(gen_prefix)
    ids = encode_prompt(tok, text)
    if tok.bos_token_id is None:  # Qwen: no BOS at all
        assert family.startswith("qwen") and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    else:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    eot = tok.convert_tokens_to_ids(END_OF_TURN[family])
    assert eot != tok.unk_token_id and eot in eos_token_ids(lb.model, tok)
    ex = tokenize_sft(tok, {"messages": msgs + [{"role": "assistant", "content": "answer 5"}]}, "messages")
    answer = [t for t in ex.labels if t != IGNORE_INDEX]
    assert eot in answer and tok.decode([t for t in answer if t != eot], skip_special_tokens=True).strip() == "answer 5"
    assert ex.input_ids[: len(ids)] == ids  # training sees the prompt exactly as the server encodes it
