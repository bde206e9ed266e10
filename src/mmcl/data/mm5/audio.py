"""mm5 audio modality: spoken English animal words synthesised by espeak-ng.

What the data is
    Each sample is a one-second WAV clip (16 kHz, mono, 16-bit PCM) of one spoken English word;
    the label is the word. ``CLASSES`` are the six words ``cat dog cow horse sheep bird``, the
    same animal concepts that occur in the image modality, on purpose: a continual learner meets
    "cat" as a silhouette and again as a spoken word.

What is real and what is synthetic
    The speech is synthetic: the Debian ``espeak-ng`` formant synthesiser (a real, widely used
    text-to-speech engine, run as a subprocess; no recordings may be downloaded here) speaks the
    word with one of 8 English accents (``en-us``, ``en-us-nyc``, ``en-gb``, ``en-gb-x-rp``,
    ``en-gb-scotland``, ``en-gb-x-gbclan``, ``en-gb-x-gbcwmd``, ``en-029``) combined with one of 24
    voice variants (male ``m1..m8``, female ``f1..f5``, ``croak``, ``klatt..klatt4``, ``grandma``,
    ``grandpa``, ``whisper``, ``whisperf``, ``Andy``, ``Annie``); a *speaker* is one such
    ``accent+variant`` pair (192 speakers). Per clip, seeded random choices set the speaking rate
    (120-200 words/min), pitch (20-80), espeak amplitude (50-100) and the final peak level
    (-18..-1 dBFS). espeak's 22.05 kHz output is trimmed of its own silence, resampled to 16 kHz
    (``scipy.signal.resample_poly``), placed at a random time offset inside the clip (leading
    silence) so that the whole word lies within the first 0.975 s (the 96 analysis frames), and
    mixed with mild coloured background noise (spectral slope 1/f^a, a in 0..2, SNR 20-35 dB
    with respect to the word). All of this augmentation is baked into the written file,
    deterministically from the seed; ``load`` is a pure decoder. espeak-ng's output is itself
    deterministic for the same arguments (same version, here 1.51), so a seed gives
    byte-identical files.

Split
    The 192 speakers are permuted with the seed; a quarter (48) are test speakers and the rest
    (144) train speakers, so no speaker (accent+variant combination) is heard in both splits.
    Accents and variants taken separately do recur (held out is their combination, plus fresh
    random rate, pitch, level, offset and noise). Within a split and class, samples cycle through
    a seeded permutation of that split's speakers. Each manifest entry carries its ``speaker``.

Layout and decoded format
    ``root/<split>/<word>/<i>.wav`` plus ``root/manifest.json`` (written last, atomically).
    ``load`` reads each WAV with ``soundfile``, checks 16 kHz, mono, 16-bit PCM, exactly 16000
    samples and a RIFF header consistent with the file size (else ``ValueError`` naming the file),
    and returns the log-mel spectrogram of ``log_mel``: float32 array (64 mel bands, 96 frames);
    25 ms Hann window, 10 ms hop, 512-point FFT, 64 triangular HTK-mel filters over 0-8 kHz,
    ``log(power_mel + 1e-6)`` (the waveform scaled to [-1, 1]); missing frames are padded with
    ``log(1e-6)`` (the log of silence, ``SILENCE_LOG``), extra frames are cropped.
"""
from __future__ import annotations

import io
import math
import os
import shutil
import struct
import subprocess
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from mmcl.data.mm5.common import begin, decode_error, finish_manifest, read_manifest, sample_path
from mmcl.results import atomic_write_bytes

MODALITY = "audio"
VERSION = "1"
CLASSES = ["cat", "dog", "cow", "horse", "sheep", "bird"]

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000  # every written clip is exactly 1 s
WIN = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 64
N_FRAMES = 96
LOG_EPS = 1e-6
SILENCE_LOG = float(np.log(LOG_EPS))
SPAN = WIN + (N_FRAMES - 1) * HOP  # 15600 samples covered by the 96 frames

ACCENTS = ("en-us", "en-us-nyc", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak", "klatt", "klatt2",
            "klatt3", "klatt4", "grandma", "grandpa", "whisper", "whisperf", "Andy", "Annie")
SPEAKERS = tuple(f"{a}+{v}" for a in ACCENTS for v in VARIANTS)
TEST_SPEAKERS = len(SPEAKERS) // 4

ESPEAK_RATE = 22050
SPEED = (120, 200)  # words per minute (espeak default 175)
PITCH = (20, 80)  # espeak default 50
AMPLITUDE = (50, 100)  # espeak default 100; lower values avoid espeak's own clipping
PEAK_DB = (-18.0, -1.0)
SNR_DB = (20.0, 35.0)
NOISE_SLOPE = (0.0, 2.0)
MARGIN = 320  # 20 ms of clip kept free before and after the word
TRIM_LEVEL = 1e-3  # |x| above this counts as speech when trimming espeak's own silence


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------

def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the HTK mel scale, peak 1."""
    fmax = sr / 2 if fmax is None else fmax
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


_FBANK = mel_filterbank()
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)  # periodic Hann


def _as_float_mono(wave_: np.ndarray) -> np.ndarray:
    w = np.asarray(wave_)
    if w.ndim not in (1, 2):
        raise ValueError(f"log_mel: expected a 1-D (samples,) or 2-D (samples, channels) wave, got shape {w.shape}")
    if w.dtype == np.uint8:
        x = (w.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(w.dtype, np.signedinteger):
        x = w.astype(np.float64) / float(2 ** (8 * w.dtype.itemsize - 1))
    elif np.issubdtype(w.dtype, np.floating):
        x = w.astype(np.float64)
    else:
        raise ValueError(f"log_mel: unsupported sample dtype {w.dtype}")
    return x.mean(axis=1) if x.ndim == 2 else x  # (samples, channels) is soundfile's layout


def log_mel(wave: np.ndarray, sr: int) -> np.ndarray:
    """Log-mel spectrogram, float32 (64, 96), of a wave at any sample rate.

    `wave`: (samples,) or (samples, channels); floats in [-1, 1] or integer PCM (int16/int32 are
    scaled by 2^15 / 2^31, uint8 is offset-binary); channels are averaged. Other sample rates are
    resampled to 16 kHz (polyphase). Then: 25 ms periodic-Hann frames every 10 ms (no centring),
    power spectrum of a 512-point FFT, 64 HTK-mel triangular filters over 0-8 kHz,
    log(mel + 1e-6); the first 96 frames are kept, missing ones are filled with log(1e-6).
    """
    w = _as_float_mono(wave)
    sr = int(sr)
    if sr <= 0:
        raise ValueError(f"log_mel: sample rate must be positive, got {sr}")
    if sr != SAMPLE_RATE:
        g = math.gcd(SAMPLE_RATE, sr)
        w = resample_poly(w, SAMPLE_RATE // g, sr // g)
    out = np.full((N_MELS, N_FRAMES), SILENCE_LOG, dtype=np.float64)
    n = 0 if len(w) < WIN else min(N_FRAMES, 1 + (len(w) - WIN) // HOP)
    if n:
        frames = np.lib.stride_tricks.sliding_window_view(w[: WIN + (n - 1) * HOP], WIN)[::HOP]
        power = np.abs(np.fft.rfft(frames * _WINDOW, n=N_FFT, axis=1)) ** 2
        out[:, :n] = np.log(power @ _FBANK.T + LOG_EPS).T
    return out.astype(np.float32)


def _riff_check(path: Path, raw: bytes) -> None:
    """Catch truncation that libsndfile would silently accept: the data chunk must fit the file."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise decode_error(path, f"cannot decode WAV (not a RIFF/WAVE file, {len(raw)} bytes)")
    pos = 12
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        if cid == b"data":
            have = len(raw) - pos - 8
            if have < size:
                raise decode_error(path, f"truncated WAV: header declares {size} bytes of audio data, file holds {have}")
            return
        pos += 8 + size + (size & 1)
    raise decode_error(path, "cannot decode WAV (no complete 'data' chunk; file truncated?)")


def read_wav(path: Path) -> np.ndarray:
    """The int16 samples of one benchmark clip, validated (ValueError naming `path` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sample file listed in the manifest does not exist")
    raw = path.read_bytes()
    _riff_check(path, raw)
    try:
        with sf.SoundFile(io.BytesIO(raw)) as f:  # the bytes checked above
            sr, ch, fmt, subtype = f.samplerate, f.channels, f.format, f.subtype
            data = f.read(dtype="int16", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as e:  # soundfile's errors are RuntimeErrors
        raise decode_error(path, f"cannot decode WAV ({str(e).split(': ', 1)[-1]})") from None
    if fmt != "WAV" or subtype != "PCM_16":
        raise decode_error(path, f"expected 16-bit PCM WAV, got {fmt}/{subtype}")
    if sr != SAMPLE_RATE:
        raise decode_error(path, f"expected sample rate {SAMPLE_RATE} Hz, got {sr} Hz")
    if ch != 1:
        raise decode_error(path, f"expected mono (1 channel), got {ch} channels")
    if data.shape[0] != CLIP_SAMPLES:
        raise decode_error(path, f"expected {CLIP_SAMPLES} samples (1 s), got {data.shape[0]}")
    return data[:, 0]


def load(root: Path) -> tuple[list, np.ndarray, np.ndarray]:
    """Decode every clip of root/manifest.json, in manifest order, to a (64, 96) float32 log-mel.

    Returns (samples, labels int64, split int8 with 0 = train, 1 = test).
    """
    root = Path(root)
    man = read_manifest(root, MODALITY)
    samples, labels, split = [], [], []
    for entry in man["files"]:
        path = root / entry["path"]
        samples.append(log_mel(read_wav(path), SAMPLE_RATE))
        labels.append(int(entry["label"]))
        split.append(0 if entry["split"] == "train" else 1)
    return samples, np.asarray(labels, dtype=np.int64), np.asarray(split, dtype=np.int8)


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------

def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("mm5 audio needs the espeak-ng command (Debian/Ubuntu: apt-get install espeak-ng)")
    return exe


def _check_voices(exe: str) -> str:
    """espeak-ng silently falls back to its default voice for unknown names: check ours exist."""
    def run(*args: str) -> str:
        return subprocess.run([exe, *args], capture_output=True, text=True, check=True).stdout

    langs = {line.split()[1] for line in run("--voices").splitlines()[1:] if len(line.split()) > 1}
    files = {line.split()[4] for line in run("--voices=variant").splitlines()[1:] if len(line.split()) > 4}
    missing = [a for a in ACCENTS if a not in langs] + [v for v in VARIANTS if f"!v/{v}" not in files]
    if missing:
        raise RuntimeError(f"espeak-ng lacks the voices {missing}; mm5 audio needs the full espeak-ng-data")
    return run("--version").split("Data at")[0].strip()


def _espeak_pcm(exe: str, speaker: str, word: str, speed: int, pitch: int, amp: int) -> np.ndarray:
    """espeak-ng's 22.05 kHz mono int16 output as float64 in [-1, 1]."""
    cmd = [exe, "-v", speaker, "-s", str(speed), "-p", str(pitch), "-a", str(amp), "--stdout", word]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise RuntimeError(f"{' '.join(cmd)}: unexpected output (not a WAV)")
    pos, fmt = 12, None
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        if cid == b"fmt ":
            fmt = struct.unpack("<HHIIHH", raw[pos + 8:pos + 24])
        elif cid == b"data":  # the size field is a placeholder when streaming: take the rest
            if fmt is None or fmt[0] != 1 or fmt[1] != 1 or fmt[2] != ESPEAK_RATE or fmt[5] != 16:
                raise RuntimeError(f"{' '.join(cmd)}: expected 16-bit mono PCM at {ESPEAK_RATE} Hz, got fmt {fmt}")
            body = raw[pos + 8:]
            return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0
        pos += 8 + size + (size & 1)
    raise RuntimeError(f"{' '.join(cmd)}: no audio data in espeak-ng output")


def _coloured_noise(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f^slope (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec * f ** (-slope / 2), n=n)
    x -= x.mean()
    return x / max(float(np.sqrt(np.mean(x ** 2))), 1e-12)


def _wav_bytes(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def _render(exe: str, job: dict) -> bytes:
    x = _espeak_pcm(exe, job["speaker"], job["word"], job["speed"], job["pitch"], job["amp"])
    on = np.flatnonzero(np.abs(x) > TRIM_LEVEL)
    if len(on) == 0:
        raise RuntimeError(f"espeak-ng produced silence for {job['word']!r} with voice {job['speaker']}")
    pad = ESPEAK_RATE // 200  # keep 5 ms around the detected speech
    x = x[max(0, on[0] - pad): on[-1] + pad + 1]
    x = resample_poly(x, 320, 441)  # 22050 Hz -> 16000 Hz
    room = SPAN - 2 * MARGIN
    x = x[:room]  # never reached with the chosen rates (longest word ~0.8 s of 0.935 s)
    x = x * (10.0 ** (job["peak_db"] / 20.0) / max(float(np.abs(x).max()), 1e-12))
    start = MARGIN + int(round(job["offset"] * (room - len(x))))
    clip = np.zeros(CLIP_SAMPLES)
    clip[start:start + len(x)] = x
    rms = float(np.sqrt(np.mean(x ** 2)))
    noise = _coloured_noise(np.random.default_rng(job["noise_seed"]), CLIP_SAMPLES, job["slope"])
    clip += noise * rms / 10.0 ** (job["snr_db"] / 20.0)
    return _wav_bytes(np.clip(np.round(clip * 32767.0), -32768, 32767))


def speaker_split(seed: int) -> tuple[list[str], list[str]]:
    """(train speakers, test speakers) for a seed: disjoint, together all SPEAKERS."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0xA0D10])).permutation(len(SPEAKERS))
    test = sorted(SPEAKERS[i] for i in perm[:TEST_SPEAKERS])
    train = sorted(SPEAKERS[i] for i in perm[TEST_SPEAKERS:])
    return train, test


def _plan(seed: int, train_per_class: int, test_per_class: int) -> list[dict]:
    """Every random choice, drawn in manifest order from generators derived from `seed`."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA0D11]))
    speakers = dict(zip(("train", "test"), speaker_split(seed)))
    jobs = []
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for label, word in enumerate(CLASSES):
            pool = speakers[split]
            cycle = [pool[i] for i in np.concatenate([rng.permutation(len(pool)) for _ in range(-(-n // len(pool)))])]
            for i in range(n):
                jobs.append({
                    "path": sample_path(split, word, i, "wav"), "label": label, "split": split,
                    "speaker": cycle[i], "word": word,
                    "speed": int(rng.integers(SPEED[0], SPEED[1] + 1)),
                    "pitch": int(rng.integers(PITCH[0], PITCH[1] + 1)),
                    "amp": int(rng.integers(AMPLITUDE[0], AMPLITUDE[1] + 1)),
                    "peak_db": float(rng.uniform(*PEAK_DB)),
                    "snr_db": float(rng.uniform(*SNR_DB)),
                    "slope": float(rng.uniform(*NOISE_SLOPE)),
                    "offset": float(rng.uniform()),
                    "noise_seed": int(rng.integers(2 ** 63)),
                })
    return jobs


def generate(root: Path, seed: int = 0, train_per_class: int = 100, test_per_class: int = 50) -> dict:
    """Write all clips under `root` plus `root/manifest.json` (last); return the manifest dict."""
    t0 = time.perf_counter()
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(f"train_per_class and test_per_class must be >= 1, got {train_per_class}, {test_per_class}")
    root = begin(root)
    exe = _espeak()
    version = _check_voices(exe)
    jobs = _plan(seed, train_per_class, test_per_class)
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # map keeps job order; each job is self-contained
        for job, data in zip(jobs, pool.map(lambda j: _render(exe, j), jobs)):
            atomic_write_bytes(root / job["path"], data)
    keep = {root / j["path"] for j in jobs}
    for split in ("train", "test"):  # stale clips of an earlier, larger generation
        for word in CLASSES:
            d = root / split / word
            if d.is_dir():
                for p in d.glob("*.wav"):
                    if p not in keep:
                        p.unlink()
    train_spk, test_spk = speaker_split(seed)
    notes = (
        f"Spoken English words (the six animal names {', '.join(CLASSES)}), synthetic speech: every clip is "
        f"rendered by the espeak-ng formant text-to-speech engine ({version}), since no recorded speech can be "
        f"downloaded here; the engine, its accents and voices are real, the recordings are not. A speaker is an "
        f"accent+voice-variant pair ({len(ACCENTS)} accents x {len(VARIANTS)} variants = {len(SPEAKERS)} speakers); "
        f"each clip also gets seeded random speaking rate {SPEED[0]}-{SPEED[1]} wpm, pitch {PITCH[0]}-{PITCH[1]}, "
        f"level, a random onset (leading silence) and mild coloured background noise (SNR {SNR_DB[0]:.0f}-"
        f"{SNR_DB[1]:.0f} dB), all baked into the 1 s 16 kHz mono 16-bit WAV files. Train and test use disjoint "
        f"speakers: {len(test_spk)} test speakers held out ({', '.join(test_spk)}), {len(train_spk)} train speakers "
        f"(the rest); accents and variants recur across splits only in different combinations. Each file entry "
        f"names its speaker."
    )
    files = [{"path": j["path"], "label": j["label"], "split": j["split"], "speaker": j["speaker"]} for j in jobs]
    return finish_manifest(root, MODALITY, VERSION, seed, list(CLASSES), train_per_class, test_per_class, files,
                           time.perf_counter() - t0, notes)
