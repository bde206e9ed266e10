"""UNIFIER's surgery: Vision Representation Expansion branches and the Vision Consistency Constraint."""
from __future__ import annotations

import inspect
import io

import pytest
import torch

from mmcl.models.llava import VLMParams, build_vlm
from mmcl.models.vre import VRE, VREParams, attach_vre, find_blocks, vcc_loss

QUESTIONS = ["what colour is the car?", "where is the boat?"]
ANSWERS = ["red", "[10,20,30,40]"]


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny(**kw):
    """The `tiny` preset (CLIP tower), small; only VRE is trainable unless told otherwise."""
    kw = {"lm_dim": 64, "lm_layers": 2, "image_size": 32, "patch_size": 8, "lm_train": "frozen",
          "train_projector": False, **kw}
    return build_vlm(VLMParams(preset="tiny", **kw))


def qwen2_vl_tower():
    """A tiny Qwen2-VL vision transformer (blocks + merger) from its config, and inputs for two 32x32 images."""
    from transformers import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    cfg = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8,
                              spatial_merge_size=2, temporal_patch_size=2)
    torch.manual_seed(0)
    tower = Qwen2VisionTransformerPretrainedModel(cfg).eval()
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])  # 2 images, 4x4 patches of 8 px each
    pixels = torch.randn(32, 3 * 2 * 8 * 8, generator=torch.Generator().manual_seed(1))
    return tower, {"hidden_states": pixels, "grid_thw": grid}


def qwen_out(tower, inputs):
    out = tower(**inputs)
    return out.pooler_output  # the merged tokens that reach the language model


def randomise_projector(vre: VRE, seed=3, std=0.2):
    """Non-zero projector columns, as after training, so every branch affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in vre.projector_parameters():
            w.copy_(torch.randn(w.shape, generator=g) * std)


def snapshot_params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def logits(m, batch):
    with torch.no_grad():
        return m(**batch).logits


# ----------------------------------------------------------------------------- VRE


def test_adding_a_branch_leaves_outputs_unchanged_bitwise():
    m = tiny()
    batch = m.batch(images(), QUESTIONS, ANSWERS)
    m.eval()
    before = logits(m, batch)
    vre = attach_vre(m)
    assert [s for _, _, s in vre.blocks] == ["mlp", "mlp"]  # the CLIP encoder layers' MLPs
    assert torch.equal(logits(m, batch), before)  # surgery alone
    vre.add_branch()
    assert torch.equal(logits(m, batch), before)  # first branch: zero projector columns
    randomise_projector(vre)
    trained = logits(m, batch)
    assert not torch.allclose(trained, before)  # the branch is live once its columns are non-zero
    vre.add_branch()
    vre.add_branch()
    assert vre.num_branches == 3
    assert torch.equal(logits(m, batch), trained)  # later branches: still exactly the same output


def test_a_step_on_branch_k_changes_only_branch_k_and_the_projector():
    m = tiny()
    batch = m.batch(images(), QUESTIONS, ANSWERS)
    vre = attach_vre(m, VREParams(bottleneck=8), branches=3)
    randomise_projector(vre)
    vre.set_trainable(1)
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in vre.branch_parameters(1) + vre.projector_parameters()}
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.SGD(trainable, lr=0.1)
    m.train()
    loss = m.loss(batch) + vre.params.lam * vre.vcc_loss()
    loss.backward()
    opt.step()
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    own = {k for k in before if ".vre.branches.1." in k or ".vre.proj." in k}
    assert changed == own, sorted(changed ^ own)  # every other tensor is bitwise equal


def test_vcc_is_zero_for_one_branch_and_positive_with_gradient_for_two():
    m = tiny()
    batch = m.batch(images(), QUESTIONS, ANSWERS)
    vre = attach_vre(m, branches=1)
    vre.set_trainable(0)
    m.train()
    m.loss(batch)
    assert vcc_loss(vre).item() == 0.0  # no other branch, no previous model

    vre.snapshot()  # the model after scenario 0 is the previous model of scenario 1
    k = vre.add_branch()
    vre.set_trainable(k)
    m.loss(batch)
    vcc = vcc_loss(vre)
    assert vcc.item() > 0 and vcc.requires_grad
    vcc.backward()
    grads = [p.grad for p in vre.branch_parameters(k)]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in vre.branch_parameters(0))  # the old branch is frozen


def test_vcc_previous_model_term_grows_when_the_projector_drifts():
    m = tiny()
    batch = m.batch(images(), QUESTIONS, ANSWERS)
    vre = attach_vre(m, VREParams(vcc_branches=False), branches=1)
    randomise_projector(vre)
    vre.snapshot()
    m.train()
    m.loss(batch)
    assert vcc_loss(vre).item() == pytest.approx(0.0, abs=1e-7)  # same projector as the previous model
    with torch.no_grad():
        for w in vre.projector_parameters():
            w.mul_(3.0)
    m.loss(batch)
    drift = vcc_loss(vre)
    assert drift.item() > 1e-4
    drift.backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in vre.projector_parameters())


def test_all_branches_run_at_test_time_without_a_scenario_id():
    m = tiny()
    batch = m.batch(images(), QUESTIONS, ANSWERS)
    tower = m.vision_tower
    sigs = [inspect.signature(f) for f in (tower.forward, m.forward, m.generate, m.loss)]
    vre = attach_vre(m, branches=3)
    assert [inspect.signature(f) for f in (tower.forward, m.forward, m.generate, m.loss)] == sigs
    randomise_projector(vre)
    m.eval()
    ref = logits(m, batch)
    for k in range(3):  # every branch contributes to the same forward pass
        with torch.no_grad():
            saved = vre.adapters[0].branches[k].up.bias.clone()
            vre.adapters[0].branches[k].up.bias.add_(1.0)
        assert not torch.allclose(logits(m, batch), ref), k
        with torch.no_grad():
            vre.adapters[0].branches[k].up.bias.copy_(saved)
    assert torch.equal(logits(m, batch), ref)
    answers = m.generate(images(), QUESTIONS, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_old_branch_survives_training_on_a_new_scenario():
    # plain fine-tuning of the tower would change its weights and the first scenario's branch
    m = tiny()
    vre = attach_vre(m, VREParams(bottleneck=8))
    base = {n: p.detach().clone() for n, p in m.vision_tower.named_parameters() if ".vre." not in n}

    def train(k, seed, steps=3):
        vre.snapshot()
        vre.set_trainable(k)
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        batch = m.batch(images(seed=seed), QUESTIONS, ANSWERS)
        m.train()
        for _ in range(steps):
            opt.zero_grad()
            (m.loss(batch) + vre.params.lam * vre.vcc_loss()).backward()
            opt.step()

    train(vre.add_branch(seed=0), seed=0)
    branch0 = [p.detach().clone() for p in vre.branch_parameters(0)]
    proj0 = [p.detach().clone() for p in vre.projector_parameters()]
    train(vre.add_branch(seed=1), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(branch0, vre.branch_parameters(0)))
    assert any(not torch.equal(a, b) for a, b in zip(proj0, vre.projector_parameters()))  # shared, trained
    assert any(p.abs().sum() > 0 for p in [w for ad in vre.adapters for w in ad.proj[1:]])  # branch 1 is live
    now = dict(m.vision_tower.named_parameters())
    assert all(torch.equal(v, now[n]) for n, v in base.items())  # the pretrained tower is untouched


def test_state_dict_round_trip_rebuilds_three_branches():
    m = tiny()
    batch = m.batch(images(), QUESTIONS, ANSWERS)
    vre = attach_vre(m, VREParams(bottleneck=4), branches=2)
    randomise_projector(vre)
    vre.snapshot()
    vre.add_branch()
    randomise_projector(vre, seed=7)
    m.eval()
    ref = logits(m, batch)
    buf = io.BytesIO()
    torch.save(vre.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)
    assert state["num_branches"] == 3 and state["num_previous"] == 2

    fresh = tiny()  # same seed: same base weights
    vre2 = attach_vre(fresh, VREParams(bottleneck=4))
    vre2.load_state_dict(state)
    assert vre2.num_branches == 3 and vre2.num_previous == 2
    fresh.eval()
    assert torch.equal(logits(fresh, batch), ref)
    for a, b in zip(vre.adapters, vre2.adapters):
        assert torch.equal(a.prev_proj, b.prev_proj)
    with pytest.raises(ValueError, match="blocks"):
        attach_vre(tiny(vision_layers=3)).load_state_dict(state)


# ----------------------------------------------------------------------------- other towers


def test_surgery_on_a_tiny_qwen2_vl_vision_tower():
    tower, inputs = qwen2_vl_tower()
    with torch.no_grad():
        ref = qwen_out(tower, inputs)
    vre = attach_vre(tower)
    assert [n for n, _, _ in vre.blocks] == ["blocks.0", "blocks.1"]  # not the merger
    assert vre.adapters[0].dim == 32
    vre.add_branch()
    with torch.no_grad():
        assert torch.equal(qwen_out(tower, inputs), ref)
    randomise_projector(vre)
    with torch.no_grad():
        live = qwen_out(tower, inputs)
    assert not torch.allclose(live, ref)
    vre.snapshot()
    k = vre.add_branch()
    with torch.no_grad():
        assert torch.equal(qwen_out(tower, inputs), live)

    vre.set_trainable(k)
    tower.train()
    out = qwen_out(tower, inputs)
    assert vre.adapters[0].lengths == [16, 16]  # the two images of the 2-D token sequence are told apart
    vcc = vre.vcc_loss()
    assert vcc.item() > 0
    (out.pow(2).mean() + vcc).backward()
    assert all(p.grad is not None for p in vre.branch_parameters(k))
    assert all(p.grad is None for n, p in tower.named_parameters() if ".vre." not in n)


def _tower(kind):
    import transformers as t

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=32, patch_size=8)
    if kind == "siglip":
        return t.SiglipVisionModel(t.SiglipVisionConfig(**small)), {"pixel_values": images()}
    if kind == "idefics3":
        return t.Idefics3VisionTransformer(t.Idefics3VisionConfig(**small)), {"pixel_values": images()}
    if kind == "vit":
        return t.ViTModel(t.ViTConfig(**small), add_pooling_layer=False), {"pixel_values": images()}
    if kind == "data2vec":  # a split MLP: intermediate + output
        return t.Data2VecVisionModel(t.Data2VecVisionConfig(**small)), {"pixel_values": images()}
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["siglip", "idefics3", "vit", "data2vec"])
def test_surgery_on_other_hf_towers(kind):
    torch.manual_seed(0)
    tower, inputs = _tower(kind)
    tower.eval()
    with torch.no_grad():
        ref = tower(**inputs).last_hidden_state
    vre = attach_vre(tower, branches=1)
    assert len(vre.blocks) == 2
    with torch.no_grad():
        assert torch.equal(tower(**inputs).last_hidden_state, ref)
        randomise_projector(vre)
        assert not torch.allclose(tower(**inputs).last_hidden_state, ref)
    vre.remove()
    with torch.no_grad():
        assert torch.equal(tower(**inputs).last_hidden_state, ref)


def test_unknown_tower_gives_a_clear_error():
    with pytest.raises(ValueError, match="MLP_SITES"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_surgery_through_the_vlm_of_a_qwen2_vl_checkpoint_and_deepcopy(tmp_path):
    import copy

    from mmcl.models.tiny_hf import save_tiny_checkpoint

    m = build_vlm(VLMParams(preset=f"hf:{save_tiny_checkpoint('qwen2_vl', tmp_path / 'q')}", lm_train="frozen"))
    batch = m.batch(images(), QUESTIONS, ANSWERS)
    m.eval()
    ref = logits(m, batch)
    vre = attach_vre(m, branches=2)  # through VLM.vision_tower (Qwen2-VL's `visual`)
    assert len(vre.blocks) == 2
    assert torch.equal(logits(m, batch), ref)
    previous = copy.deepcopy(m)  # e.g. a frozen previous model: its hooks drive its own copies of the branches
    randomise_projector(vre)
    assert not torch.allclose(logits(m, batch), ref)
    assert torch.equal(logits(previous, batch), ref)
