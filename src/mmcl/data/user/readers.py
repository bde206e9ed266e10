"""Decoders for users' files, one per modality: a file in, a fixed-shape array (or a string) out.

Every decoder raises `BadFile(reason)` for a file it cannot use; the caller prefixes the path, so
an error report has one line per bad file: ``<path>: <reason>``. Shapes are fixed per modality
so that a source's samples stack into one batch for the frozen encoders of
`mmcl.data.mm5.encode_modality` (which also resize them to what the encoders see):

| modality | formats | decoded sample |
|---|---|---|
| image | PNG, JPEG (also BMP, WebP), any mode (grey, palette, RGBA on white) | uint8 (96, 96, 3) RGB, resized with antialiasing |
| video | MP4, AVI (also MOV, MKV, WebM) via PyAV | uint8 (8, 64, 64, 3): 8 frames sampled uniformly over the clip |
| audio | WAV, FLAC (also OGG) via soundfile | float32 (64, n) log-mel at 100 frames/s after mixing to mono and resampling to 16 kHz (`scipy.signal.resample_poly`); `fit_audio` then pads/crops a source to one duration and pools it to (64, 96) |
| depth | 16-bit PNG (8-bit grey also read), NPY (2-D, or with a singleton channel) | float32 (96, 96), nearest-neighbour resize; 0 / negative / non-finite = no depth |
| text | UTF-8 ``.txt`` (one sample per file) or a manifest's ``text`` column | str, whitespace collapsed |

With an encoder from a local checkpoint (`encoder.<modality>=hf:<dir>`, `mmcl.models.hf`) images, clips
and depth maps are decoded at the model's input size (`size`) and audio as a float32 mono waveform at
its feature extractor's sampling rate (`wave_rate`) instead of a log-mel.
"""
from __future__ import annotations

import io
import math
import re
import struct
from pathlib import Path

import numpy as np

IMAGE_SIZE = 96  # what encode_modality feeds EfficientNet-Lite0 for images and depth
VIDEO_FRAMES = 8  # one token per frame: mm5's TOKENS
VIDEO_SIZE = 64  # what encode_modality feeds the encoder and the optical flow
AUDIO_RATE = 16000
AUDIO_FRAMES = 96  # time columns of a spectrogram after `fit_audio` (mm5's log-mel width)
MAX_AUDIO_SECONDS = 30.0  # longer recordings are cut here when decoded

EXTENSIONS = {
    "image": (".png", ".jpg", ".jpeg", ".bmp", ".webp"),
    "video": (".mp4", ".avi", ".mov", ".mkv", ".webm"),
    "audio": (".wav", ".flac", ".ogg"),
    "depth": (".png", ".npy"),
    "text": (".txt",),
}


class BadFile(Exception):
    """A file that cannot be used; str(e) is the reason (without the path)."""


def _why(e: Exception, path: Path) -> str:
    """A library's error message without the path it often repeats."""
    msg = str(e)
    for p in (f": {str(path)!r}", f": {str(path)}", repr(str(path)), str(path)):
        msg = msg.replace(p, "")
    msg = re.sub(r"^\[Errno -?\d+\]\s*", "", msg.strip()).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _file(x) -> Path | io.BytesIO:
    """A path, or a file in memory (the bytes of a Hugging Face dataset's image or audio cell)."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(x))
    return x if isinstance(x, io.BytesIO) else Path(x)


def _nonempty(path: Path | io.BytesIO) -> None:
    if isinstance(path, io.BytesIO):
        if not path.getbuffer().nbytes:
            raise BadFile("empty value (0 bytes)")
        return
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadFile("file not found") from None
    if size == 0:
        raise BadFile("empty file (0 bytes)")


# ----------------------------------------------------------------------------------------- image
def decode_image(path: Path | io.BytesIO, size: int = IMAGE_SIZE) -> np.ndarray:
    from PIL import Image

    path = _file(path)
    _nonempty(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: scale to 8 bits
                a = np.asarray(im, dtype=np.float64)
                hi = float(a.max()) if a.size else 0.0
                im = Image.fromarray((a / hi * 255 if hi > 0 else a * 0).astype(np.uint8), mode="L")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.new("RGB", rgba.size, (255, 255, 255))
                im.paste(rgba, mask=rgba.getchannel("A"))
            im = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).copy()
    except BadFile:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt files
        raise BadFile(f"cannot decode image ({_why(e, path)})") from None


# ----------------------------------------------------------------------------------------- video
def decode_video(path: Path, size: int = VIDEO_SIZE) -> np.ndarray:
    import av

    path = Path(path)
    _nonempty(path)
    frames = []
    try:
        with av.open(str(path), "r") as c:
            if not c.streams.video:
                raise BadFile("no video stream in the file")
            for f in c.decode(video=0):
                frames.append(f.to_ndarray(width=size, height=size, format="rgb24"))
    except BadFile:
        raise
    except Exception as e:  # noqa: BLE001 - any container/codec failure: corrupt or truncated
        if not frames:
            raise BadFile(f"cannot decode video ({_why(e, path)})") from None
        # frames decoded before a damaged tail are kept: players show them too
    if not frames:
        raise BadFile("no decodable video frames")
    idx = np.linspace(0, len(frames) - 1, VIDEO_FRAMES).round().astype(int)
    return np.stack([frames[i] for i in idx]).astype(np.uint8, copy=False)


# ----------------------------------------------------------------------------------------- audio
def _wav_check(path: Path | io.BytesIO) -> None:
    """Truncation that libsndfile would accept silently: the data chunk must fit in the file."""
    if isinstance(path, io.BytesIO):
        raw, size = path.getvalue()[: 1 << 16], path.getbuffer().nbytes
    else:
        with open(path, "rb") as fh:
            raw = fh.read(1 << 16)
            size = fh.seek(0, 2)
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        if raw[:4] in (b"RF64", b"BW64"):
            return
        raise BadFile(f"not a RIFF/WAVE file ({size} bytes)")
    pos = 12
    while pos + 8 <= len(raw):
        cid, n = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        if cid == b"data":
            have = size - pos - 8
            if n not in (0, 0xFFFFFFFF) and have < n:  # 0 / -1: size unknown (streamed writers)
                raise BadFile(f"truncated WAV: header declares {n} bytes of audio data, file holds {have}")
            return
        pos += 8 + n + (n & 1)
    if pos + 8 > size:
        raise BadFile("truncated WAV: no complete 'data' chunk")


def decode_audio(path: Path, max_seconds: float = MAX_AUDIO_SECONDS, wave_rate: int | None = None) -> np.ndarray:
    """Log-mel spectrogram float32 (64, n): n = 100 frames per second of audio (at least 1); with `wave_rate`,
    the float32 mono waveform resampled to that rate instead."""
    x = _read_audio(_file(path), max_seconds, wave_rate or AUDIO_RATE)
    return x.astype(np.float32) if wave_rate else log_mel(x)


def _read_audio(path: Path, max_seconds: float, rate: int) -> np.ndarray:
    """Mono float64 samples at `rate` (BadFile for anything unusable)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    _nonempty(path)
    in_memory = isinstance(path, io.BytesIO)
    if (path.getvalue()[:4] == b"RIFF") if in_memory else path.suffix.lower() == ".wav":
        _wav_check(path)
    try:
        with sf.SoundFile(path if in_memory else str(path)) as f:
            sr, declared = f.samplerate, f.frames
            limit = int(math.ceil(max_seconds * sr))
            data = f.read(frames=min(declared, limit) if declared > 0 else limit, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - soundfile raises RuntimeError/LibsndfileError/TypeError
        raise BadFile(f"cannot decode audio ({_why(e, path)})") from None
    if len(data) == 0:
        raise BadFile("no audio samples")
    if 0 < declared < 2**62 and len(data) < min(declared, limit):
        raise BadFile(f"truncated audio: header declares {declared} samples, decoded {len(data)}")
    if not np.isfinite(data).all():
        raise BadFile("audio samples are not finite (NaN or inf)")
    x = data.mean(axis=1).astype(np.float64)
    if sr != rate:
        g = math.gcd(rate, int(sr))
        x = resample_poly(x, rate // g, int(sr) // g)
    return x


def log_mel(x: np.ndarray) -> np.ndarray:
    """mm5's log-mel (25 ms Hann frames every 10 ms, 64 HTK mels over 0-8 kHz) over a whole 16 kHz wave."""
    from mmcl.data.mm5.audio import _FBANK, _WINDOW, HOP, LOG_EPS, N_FFT, SILENCE_LOG, WIN

    if len(x) < WIN:
        x = np.pad(x, (0, WIN - len(x)))
    n = 1 + (len(x) - WIN) // HOP
    out = np.full((_FBANK.shape[0], n), SILENCE_LOG, dtype=np.float32)
    for s in range(0, n, 2048):  # bounded memory for long recordings
        e = min(n, s + 2048)
        frames = np.lib.stride_tricks.sliding_window_view(x[s * HOP: (e - 1) * HOP + WIN], WIN)[::HOP]
        power = np.abs(np.fft.rfft(frames * _WINDOW, n=N_FFT, axis=1)) ** 2
        out[:, s:e] = np.log(power @ _FBANK.T + LOG_EPS).T
    return out


def audio_seconds(mel: np.ndarray, wave_rate: int | None = None) -> float:
    """Duration of a decoded clip: a log-mel (100 frames/s), or a waveform at `wave_rate`."""
    return len(mel) / wave_rate if wave_rate else mel.shape[1] / 100.0


def fit_wave(wave: np.ndarray, seconds: float, rate: int) -> np.ndarray:
    """Pad (with silence) or crop a waveform to `seconds`."""
    n = max(1, int(round(seconds * rate)))
    return np.pad(wave, (0, n - len(wave))) if len(wave) < n else wave[:n]


def fit_audio(mel: np.ndarray, seconds: float) -> np.ndarray:
    """Pad (with silence) or crop a log-mel to `seconds`, then average its time axis into 96 columns."""
    from mmcl.data.mm5.audio import SILENCE_LOG

    n = max(AUDIO_FRAMES, int(round(seconds * 100)))
    if mel.shape[1] < n:
        mel = np.concatenate([mel, np.full((mel.shape[0], n - mel.shape[1]), SILENCE_LOG, np.float32)], axis=1)
    mel = mel[:, :n]
    if n == AUDIO_FRAMES:
        return mel.astype(np.float32)
    edges = np.linspace(0, n, AUDIO_FRAMES + 1).round().astype(int)
    return np.stack([mel[:, a:b].mean(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------- depth
def decode_depth(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    from PIL import Image

    path = Path(path)
    _nonempty(path)
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise BadFile(f"cannot read NPY ({_why(e, path)})") from None
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iuf":
            raise BadFile(f"expected a numeric array, got dtype {getattr(a, 'dtype', type(a).__name__)}")
        if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]):
            a = a.reshape(a.shape[1:] if a.shape[0] == 1 else a.shape[:2])
        if a.ndim != 2:
            raise BadFile(f"expected a 2-D depth map (H, W), got shape {tuple(a.shape)}")
        a = a.astype(np.float32)
    else:
        try:
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                a = np.asarray(im)
        except Exception as e:  # noqa: BLE001
            raise BadFile(f"cannot decode PNG ({_why(e, path)})") from None
        if mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
            raise BadFile(f"expected a single-channel 16-bit depth PNG, got mode {mode} "
                          f"(a colour rendering of depth is not depth)")
        a = a.astype(np.float32)
    if min(a.shape) < 2:
        raise BadFile(f"expected a 2-D depth map (H, W), got shape {tuple(a.shape)}")
    valid = np.isfinite(a) & (a > 0)
    if not valid.any():
        raise BadFile("no valid depth: every pixel is 0, negative or not finite")
    a = np.where(valid, a, 0.0).astype(np.float32)
    return np.asarray(Image.fromarray(a, mode="F").resize((size, size), Image.Resampling.NEAREST),
                      dtype=np.float32).copy()


# ------------------------------------------------------------------------------------------ text
_WS = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Collapse whitespace; raise BadFile for empty text."""
    text = _WS.sub(" ", _CONTROL.sub(" ", str(text))).strip()
    if not text:
        raise BadFile("empty text")
    return text


def decode_text(path: Path) -> str:
    path = Path(path)
    _nonempty(path)
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadFile(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    return clean_text(raw)


DECODERS = {"image": decode_image, "video": decode_video, "audio": decode_audio, "depth": decode_depth,
            "text": decode_text}


def decode(modality: str, path: Path, **options):
    """Decode one file; `options` (size, wave_rate) come from `mmcl.models.hf.decode_options`."""
    return DECODERS[modality](path, **options)


def decode_value(modality: str, value, **options):
    """Decode one cell of a Hugging Face dataset: text, or an image / audio cell read with `decode=False`
    ({"bytes": ..., "path": ...}: the file's bytes, or a path where they are not embedded)."""
    if value is None:
        raise BadFile("empty value (None)")
    if modality == "text":
        if not isinstance(value, str):
            raise BadFile(f"expected text, got {type(value).__name__}")
        return clean_text(value)
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
        if not value:
            raise BadFile("empty value (neither bytes nor a path)")
    if not isinstance(value, (bytes, bytearray, str)):
        raise BadFile(f"expected an encoded {modality} file (bytes or a path), got {type(value).__name__}")
    return DECODERS[modality](_file(value), **options)


def sample_bytes(sample) -> int:
    return len(sample) if isinstance(sample, str) else int(getattr(sample, "nbytes", 0))

