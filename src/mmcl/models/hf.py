"""Frozen encoders from your own Hugging Face checkpoints on disk: `encoder.<modality>=hf:<local dir>`.

A local directory saved by `save_pretrained` (or downloaded once with `huggingface-cli download`) is loaded
with transformers, `local_files_only=True`: nothing is ever fetched from a hub.

| modality | models | input | pooled token (token 0) |
|---|---|---|---|
| image, depth | CLIP, SigLIP (their vision tower), ViT, DeiT, DINOv2, ... | the directory's image processor; without one: resize to `image_size`, scale to [-1, 1] | `pooler_output` (CLIP/SigLIP/ViT/DINOv2), else the mean |
| video | the same vision models, on 8 frames | as image | mean over frames of the frames' pooled features; tokens 1-7 stay the optical-flow motion tokens |
| audio | AST, CLAP (its audio tower), Whisper (its encoder) | the directory's feature extractor (sampling rate, mel bins); without one: the model type's default extractor sized by its config | `pooler_output` (AST, CLAP), else the mean over the frames that hold audio (Whisper) |
| text | BERT-style models, sentence-transformers directories, CLIP/SigLIP (their text tower) | the directory's tokenizer (required) | a sentence-transformers `1_Pooling/config.json` mode; else `pooler_output` of a text tower; else the masked mean |

Tokens 1.. are the last hidden states mean-pooled into up to 7 contiguous segments of the sequence
(patches, frames or word pieces), so every sample has at most 8 tokens of the model's width, as with the
bundled encoders. These encoders have no training-free map into the anchor space: `zs` is zero.

A checkpoint is identified by its resolved path and a fingerprint of its files (small files by content,
weight files by size, modification time and a hash of their first and last MiB), so features cached from
a checkpoint are not served after it changes.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from mmcl.errors import ConfigError

PREFIX = "hf:"
DEFAULT = "default"
SEGMENTS = 7  # tokens after the pooled one (mm5's TOKENS - 1)
BATCH = 32
SMALL_FILE = 16 << 20  # files up to this size are fingerprinted by content
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
KIND = {"image": "vision", "video": "vision", "depth": "vision", "audio": "audio", "text": "text"}
EXAMPLES = {"vision": "CLIP, SigLIP, ViT, DINOv2", "audio": "AST, CLAP, Whisper", "text": "BERT, sentence-transformers"}


@dataclass(frozen=True)
class HFSpec:
    key: str  # the config key, for error messages ("encoder.image")
    modality: str
    path: Path  # resolved directory
    model_type: str
    fingerprint: str

    @property
    def kind(self) -> str:
        return KIND[self.modality]

    def identity(self) -> str:
        """What the features depend on: goes into feature cache keys."""
        return f"hf|{self.kind}|{self.path}|{self.fingerprint}"

    def describe(self) -> str:
        return f"hf:{self.path} ({self.model_type})"


def _kinds(conf: dict) -> set[str]:
    """Which kinds of input a config.json's model takes (a CLIP checkpoint: vision and text)."""
    kinds = set()
    if "vision_config" in conf or "image_size" in conf:
        kinds.add("vision")
    if "audio_config" in conf or "num_mel_bins" in conf:
        kinds.add("audio")
    if "text_config" in conf or ("vocab_size" in conf and not kinds):
        kinds.add("text")
    return kinds


def fingerprint(path: Path) -> str:
    """A hash of the directory's files: small ones by content, big ones (weights) by size, mtime, head and tail."""
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file())
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        files.append(pooling)
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path)}|{st.st_size}\n".encode())
        with open(p, "rb") as fh:
            if st.st_size <= SMALL_FILE:
                h.update(fh.read())
            else:
                h.update(f"{st.st_mtime_ns}".encode())
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:20]


def parse(key: str, modality: str, value) -> HFSpec | None:
    """`encoder.<modality>`'s value: None for the bundled encoder, an HFSpec for `hf:<dir>`; ConfigError otherwise."""
    if value is None or value == DEFAULT:
        return None
    if not isinstance(value, str) or not value.startswith(PREFIX) or not value[len(PREFIX):].strip():
        raise ConfigError(f"config key '{key}' expects '{DEFAULT}' or 'hf:<local model directory>', got {value!r}")
    raw = value[len(PREFIX):].strip()
    p = Path(os.path.expandvars(os.path.expanduser(raw)))
    if not p.exists():
        raise ConfigError(f"{key}: directory {p} does not exist (models are loaded from local directories only)")
    if not p.is_dir():
        raise ConfigError(f"{key}: {p} is not a directory (expected a Hugging Face model directory)")
    cfile = p / "config.json"
    if not cfile.is_file():
        raise ConfigError(f"{key}: {p} is not a Hugging Face model directory (no config.json)")
    try:
        conf = json.loads(cfile.read_text(encoding="utf-8"))
        if not isinstance(conf, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: {cfile} is not a valid model config ({e})") from None
    mtype = conf.get("model_type")
    if not isinstance(mtype, str) or not mtype:
        raise ConfigError(f"{key}: {cfile} has no 'model_type': not a Hugging Face model directory")
    if not any((p / w).is_file() for w in WEIGHTS):
        raise ConfigError(f"{key}: {p} has a config.json but no weights (model.safetensors or pytorch_model.bin)")
    kind = KIND[modality]
    if kind not in _kinds(conf):
        article = "an" if kind == "audio" else "a"
        raise ConfigError(f"{key}: {p} holds a '{mtype}' model, not {article} {kind} encoder ({EXAMPLES[kind]}, ...)")
    return HFSpec(key, modality, p.resolve(), mtype, fingerprint(p))


def check(encoders: dict) -> None:
    """Config-time checks of every `encoder.<modality>` (format, directory, model kind)."""
    from mmcl.stream import MODALITIES

    for m in MODALITIES:
        parse(f"encoder.{m}", m, encoders.get(m))


def specs(encoders: dict) -> dict[str, HFSpec]:
    """modality -> HFSpec for the modalities whose encoder is a local checkpoint."""
    from mmcl.stream import MODALITIES

    out = {}
    for m in MODALITIES:
        s = parse(f"encoder.{m}", m, encoders.get(m))
        if s is not None:
            out[m] = s
    return out


# ------------------------------------------------------------------------------------------ loading
class HFEncoder:
    """A loaded frozen tower with its pre-processing; `encode(modality, samples)` -> tokens (N, t, d), zs."""

    def __init__(self, spec: HFSpec):
        import transformers
        from transformers import AutoConfig, AutoModel

        self.spec = spec
        path = str(spec.path)
        verbosity = transformers.logging.get_verbosity()
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.logging.set_verbosity_error()  # load reports of unused text towers etc. are noise here
        transformers.utils.logging.disable_progress_bar()
        try:
            try:
                self.config = AutoConfig.from_pretrained(path, local_files_only=True)
            except (ValueError, KeyError) as e:
                raise ConfigError(f"{spec.key}: {path}: model type '{spec.model_type}' is not known to transformers "
                                  f"{transformers.__version__} ({str(e).splitlines()[0][:120]})") from None
            try:
                model = AutoModel.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError, RuntimeError) as e:
                raise ConfigError(f"{spec.key}: cannot load the model in {path} "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
            self.processor = self._processor(path)
        finally:
            transformers.logging.set_verbosity(verbosity)
            if bars:
                transformers.utils.logging.enable_progress_bar()
        self.model = model.eval().requires_grad_(False)
        self.device = torch.device("cpu")  # where the model is now (`_on_device` moves it to the run's device)
        kind = spec.kind
        self.tower, self.conf = model, self.config
        self.extra = {}
        if kind == "vision" and hasattr(model, "vision_model"):
            self.tower, self.conf = model.vision_model, getattr(self.config, "vision_config", self.config)
        elif kind == "audio" and hasattr(model, "audio_model"):
            self.tower, self.conf = model.audio_model, getattr(self.config, "audio_config", self.config)
        elif kind == "audio" and self.config.model_type == "whisper":
            self.tower = model.get_encoder()
        elif kind == "text" and hasattr(model, "text_model"):
            self.tower, self.conf = model.text_model, getattr(self.config, "text_config", self.config)
        self.accepts = set(inspect.signature(self.tower.forward).parameters)
        self.pooling = self._st_pooling(spec.path)

    # -- pre-processing ---------------------------------------------------------------------
    def _processor(self, path: str):
        from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

        kind = self.spec.kind
        has = lambda *names: any((Path(path) / n).is_file() for n in names)  # noqa: E731
        try:
            if kind == "text":
                if not has("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json"):
                    raise ConfigError(f"{self.spec.key}: {path} has no tokenizer files (tokenizer.json, vocab.txt, ...): "
                                      f"a text encoder needs its tokenizer")
                return AutoTokenizer.from_pretrained(path, local_files_only=True)
            if has("preprocessor_config.json"):
                if kind == "vision":
                    return AutoImageProcessor.from_pretrained(path, local_files_only=True)
                return AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        except ConfigError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{self.spec.key}: cannot load the pre-processing of {path} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        return None if kind == "vision" else self._default_extractor()

    def _default_extractor(self):
        """An audio model without preprocessor_config.json: its type's extractor, sized by its config."""
        c = self.config
        mt = c.model_type
        if mt == "audio-spectrogram-transformer":
            from transformers import ASTFeatureExtractor

            return ASTFeatureExtractor(num_mel_bins=c.num_mel_bins, max_length=c.max_length)
        if mt == "whisper":
            from transformers import WhisperFeatureExtractor

            return WhisperFeatureExtractor(feature_size=c.num_mel_bins)
        if mt == "clap":
            from transformers import ClapFeatureExtractor

            return ClapFeatureExtractor(feature_size=getattr(c.audio_config, "num_mel_bins", 64))
        raise ConfigError(f"{self.spec.key}: {self.spec.path} has no preprocessor_config.json and mmcl knows no "
                          f"default feature extractor for model type '{mt}'")

    @staticmethod
    def _st_pooling(path: Path) -> str | None:
        p = path / "1_Pooling" / "config.json"
        if not p.is_file():
            return None
        try:
            c = json.loads(p.read_text())
        except ValueError:
            return None
        for mode in ("cls_token", "max_tokens", "mean_tokens"):
            if c.get(f"pooling_mode_{mode}"):
                return mode.split("_")[0]
        return None

    @property
    def width(self) -> int:
        return int(getattr(self.conf, "hidden_size", None) or getattr(self.conf, "d_model"))

    @property
    def image_size(self) -> int:
        """Side of the square images decoded for this model (its input size, within 32..384)."""
        s = getattr(self.conf, "image_size", 224)
        s = s[0] if isinstance(s, (list, tuple)) else s
        return int(min(max(int(s), 32), 384))

    @property
    def sampling_rate(self) -> int:
        return int(getattr(self.processor, "sampling_rate", 16000))

    # -- forward ----------------------------------------------------------------------------
    def _on_device(self) -> torch.device:
        """The run's encoding device (`mmcl.device.encoding_device`), the model moved there first if it is not:
        like the bundled encoders, features are computed on the run's device (a GPU) and returned on the CPU."""
        from mmcl.device import encoding_device

        dev = encoding_device()
        if dev != self.device:
            self.model.to(dev)
            self.device = dev
        return dev

    def _run(self, inputs: dict, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1 + segments, d): pooled token then segment means of the last hidden states (on the CPU)."""
        dev = self._on_device()
        inputs = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in inputs.items() if k in self.accepts}
        out = self.tower(**inputs, return_dict=True)
        h = out.last_hidden_state
        if h.ndim == 4:  # (B, C, H, W) feature maps (CLAP's audio tower): positions as a sequence
            h = h.flatten(2).transpose(1, 2)
        h = h.float().cpu()
        B, L, d = h.shape
        if valid is None:
            valid = torch.ones(B, L, dtype=torch.bool)
        valid = valid[:, :L]
        m = valid[..., None].float()
        mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        pooled = getattr(out, "pooler_output", None)
        if self.pooling == "cls":
            first = h[:, 0]
        elif self.pooling == "max":
            first = h.masked_fill(~valid[..., None], float("-inf")).amax(1)
        elif self.pooling == "mean" or pooled is None or pooled.ndim != 2 or pooled.shape[-1] != d:
            first = mean
        else:
            first = pooled.float().cpu()
        n_seg = min(SEGMENTS, L)
        segs = torch.zeros(B, n_seg, d)
        for i in range(B):
            idx = torch.nonzero(valid[i]).flatten()
            if len(idx) == 0:
                continue
            for k, chunk in enumerate(torch.tensor_split(h[i, idx], min(n_seg, len(idx)))):
                segs[i, k] = chunk.mean(0)
        return torch.cat([first[:, None], segs], dim=1)

    def _pixels(self, images: np.ndarray) -> dict:
        """uint8 (N, H, W, 3) -> model inputs."""
        if self.processor is not None:
            return dict(self.processor(images=list(images), return_tensors="pt"))
        import torch.nn.functional as F

        s = self.image_size
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return {"pixel_values": x / 127.5 - 1.0}

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for s in range(0, len(images), BATCH):
                out.append(self._run(self._pixels(images[s:s + BATCH])))
        return torch.cat(out)

    def encode_audio(self, waves: list[np.ndarray], seconds: float) -> torch.Tensor:
        fe, rate = self.processor, self.sampling_rate
        out = []
        with torch.no_grad():
            for s in range(0, len(waves), BATCH):
                chunk = [np.asarray(w, dtype=np.float32) for w in waves[s:s + BATCH]]
                kw = {}
                if self.config.model_type == "clap":  # the input layout the audio tower was built for
                    kw["truncation"] = "fusion" if getattr(self.conf, "enable_fusion", False) else "rand_trunc"
                inputs = dict(fe(chunk, sampling_rate=rate, return_tensors="pt", **kw))
                valid = None
                if self.config.model_type == "whisper":  # fixed-length input; pool only where the audio is
                    x = inputs["input_features"]
                    n = 2 * int(self.conf.max_source_positions)
                    x = x[..., :n] if x.shape[-1] >= n else torch.nn.functional.pad(x, (0, n - x.shape[-1]))
                    inputs = {"input_features": x}
                    chunk_s = n * fe.hop_length / rate
                    keep = max(1, int(round(self.conf.max_source_positions * min(1.0, seconds / chunk_s))))
                    valid = torch.zeros(len(chunk), self.conf.max_source_positions, dtype=torch.bool)
                    valid[:, :keep] = True
                out.append(self._run(inputs, valid))
        return torch.cat(out)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tok = self.processor
        limit = min(int(getattr(tok, "model_max_length", 512) or 512), 512,
                    int(getattr(self.conf, "max_position_embeddings", 512) or 512))
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), BATCH):
                enc = tok(list(texts[s:s + BATCH]), padding=True, truncation=True, max_length=limit,
                          return_tensors="pt")
                out.append(self._run(dict(enc), enc["attention_mask"].bool()))
        return torch.cat(out)


@lru_cache(maxsize=4)
def _load(spec: HFSpec) -> HFEncoder:
    return HFEncoder(spec)


def load(spec: HFSpec) -> HFEncoder:
    return _load(spec)


def decode_options(spec: HFSpec | None, modality: str) -> dict:
    """How a reader decodes files for this encoder (None: the bundled encoders' defaults)."""
    if spec is None:
        return {}
    enc = load(spec)
    if modality in ("image", "depth", "video"):
        return {"size": enc.image_size}
    if modality == "audio":
        return {"wave_rate": enc.sampling_rate}
    return {}


def encode(spec: HFSpec, modality: str, samples: list, seconds: float | None = None) -> dict[str, torch.Tensor]:
    """Token features (N, t, d) and zero `zs` (N, 384) of decoded samples with a local checkpoint.

    Samples are what the readers decode with `decode_options`: uint8 (S, S, 3) images, uint8 (T, S, S, 3)
    clips, float32 depth maps, float32 mono waveforms at the extractor's rate, strings.
    """
    from mmcl.models import encoders as enc_mod

    enc = load(spec)
    n = len(samples)
    if modality == "image":
        imgs = np.stack([s if s.ndim == 3 else np.repeat(s[..., None], 3, -1) for s in samples])
        tokens = enc.encode_images(imgs)
    elif modality == "depth":
        from mmcl.data.mm5.depth import depth_to_image

        tokens = enc.encode_images(np.repeat(np.stack([depth_to_image(s) for s in samples])[..., None], 3, -1))
    elif modality == "video":
        import torch.nn.functional as F

        frames = np.stack(samples)  # (N, T, S, S, 3)
        N, T = frames.shape[:2]
        pooled = enc.encode_images(frames.reshape(N * T, *frames.shape[2:]))[:, 0].reshape(N, T, -1).mean(1)
        small = torch.from_numpy(frames.reshape(N * T, *frames.shape[2:])).permute(0, 3, 1, 2).float()
        small = F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)
        small = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(N, T, 64, 64, 3).numpy()
        flow = enc_mod.optical_flow_grid(small, grid=4)  # (N, T-1, 32): the motion tokens, as with the bundled encoders
        d = max(pooled.shape[-1], flow.shape[-1])
        tokens = torch.zeros(N, T, d)
        tokens[:, 0, : pooled.shape[-1]] = pooled
        tokens[:, 1:, : flow.shape[-1]] = flow
    elif modality == "audio":
        tokens = enc.encode_audio(samples, seconds or max(len(w) for w in samples) / enc.sampling_rate)
    else:
        tokens = enc.encode_text(samples)
    return {"tokens": tokens, "zs": torch.zeros(n, 384)}
