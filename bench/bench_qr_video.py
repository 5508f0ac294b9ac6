"""Measure the QR/H.264 frame codec: QR encoders, CRF x x264 settings, decode speed, end-to-end.

Reproduces the tables in bench/QR_VIDEO.md and firmware_tools/qr_video.py. Prints one JSON
object (machine info + every measurement) on stdout; progress goes to stderr.

Usage::

    PYTHONPATH=. python bench/bench_qr_video.py                 # everything (~10 min on 2 cores)
    PYTHONPATH=. python bench/bench_qr_video.py --parts sweep --n 300
    PYTHONPATH=. python bench/bench_qr_video.py --parts e2e --e2e-frames 2000
    PYTHONPATH=. python bench/bench_qr_video.py --parts threads --n 200   # not in the default parts

Payloads are uniformly random bytes (as ciphertext is), one full QR symbol each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from edge.errors import FrameDecodeError
from edge.frames import FrameReader
from firmware_tools import mp4_writer, qr_video, qr_writer
from firmware_tools.qr_video import DEFAULT_VIDEO_PARAMS, VideoParams, check_mp4, encode_mp4_file


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    governor = "unknown"
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    import av
    import zxingcpp

    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_model": cpu, "nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "cpu_governor": governor, "loadavg_at_start": os.getloadavg(), "av": av.__version__,
            "zxingcpp": getattr(zxingcpp, "__version__", "3.x"), "numpy": np.__version__}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def payloads_for(params: VideoParams, n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(params.payload_capacity_bytes) for _ in range(n)]


# -- 1. QR encoders ---------------------------------------------------------------------------


def bench_qr_encoders(n: int) -> dict:
    import qrcode
    import segno
    import zxingcpp

    fmt = zxingcpp.BarcodeFormat.QRCode
    payloads = payloads_for(DEFAULT_VIDEO_PARAMS, n)

    def zx(p: bytes, mask: int | None) -> np.ndarray:
        kw = {"ec_level": "L", "version": 40, "eci": "0"}
        if mask is not None:
            kw["data_mask"] = mask
        return np.asarray(zxingcpp.create_barcode(p, fmt, **kw).to_image(scale=1, add_quiet_zones=False))

    def sg(p: bytes) -> np.ndarray:
        m = np.asarray(segno.make_qr(p, version=40, error="L", mode="byte", boost_error=False).matrix, np.uint8)
        return (1 - m) * 255

    def qc(p: bytes) -> np.ndarray:
        q = qrcode.QRCode(version=40, error_correction=qrcode.constants.ERROR_CORRECT_L, border=0)
        q.add_data(qrcode.util.QRData(p, mode=qrcode.util.MODE_8BIT_BYTE))
        q.make(fit=False)
        return (1 - np.asarray(q.get_matrix(), np.uint8)) * 255

    writer = qr_writer.numpy_writer(40, "L", 0)
    encoders = {"numpy_writer_mask0 (default)": writer.modules, "zxingcpp_fixed_mask0": lambda p: zx(p, 0),
                "zxingcpp_auto_mask": lambda p: zx(p, None), "segno": sg, "qrcode": qc}
    counts = {"numpy_writer_mask0 (default)": n, "zxingcpp_fixed_mask0": n, "zxingcpp_auto_mask": n,
              "segno": min(n, 20), "qrcode": min(n, 10)}
    out = {}
    for name, fn in encoders.items():
        k = counts[name]
        fn(payloads[0])
        t0, c0 = time.perf_counter(), time.process_time()
        mats = [fn(p) for p in payloads[:k]]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        exact = 0
        for p, m in zip(payloads[:k], mats):
            img = np.pad(m.astype(np.uint8), 8, constant_values=255)
            found = zxingcpp.read_barcodes(img, formats=fmt)
            exact += len(found) == 1 and found[0].bytes == p
        same = None
        if name != "zxingcpp_auto_mask":
            same = all(np.array_equal(m, zx(p, 0)) for p, m in zip(payloads[:k], mats))
        out[name] = {"n": k, "ms_per_symbol_wall": round(wall / k * 1e3, 2),
                     "ms_per_symbol_cpu": round(cpu / k * 1e3, 2), "byte_exact": f"{exact}/{k}",
                     "symbol_modules": list(mats[0].shape), "same_modules_as_zxingcpp_mask0": same}
        log(f"qr encoder {name}: {out[name]}")
    return out


# -- 2. CRF sweep -------------------------------------------------------------------------------


def trial(params: VideoParams, lumas: list[bytes], payloads: list[bytes], tmp: Path) -> dict:
    path = tmp / "sweep.mp4"
    t0, c0 = time.perf_counter(), time.process_time()
    n = mp4_writer.encode_lumas(lumas, path, params)
    enc_wall, enc_cpu = time.perf_counter() - t0, time.process_time() - c0
    video = mp4_writer.read_sample_table(path, n)
    bad = check_mp4(path, payloads, params, video.extradata, video.sample_offsets, video.sample_sizes,
                    n_workers=0)
    return {"crf": params.crf, "ok": n - len(bad), "n": n,
            "mp4_bytes_per_payload_byte": round(video.size_bytes / sum(map(len, payloads)), 3),
            "mp4_bytes_per_frame": round(video.size_bytes / n),
            "encode_ms_per_frame_wall": round(enc_wall / n * 1e3, 2),
            "encode_ms_per_frame_cpu": round(enc_cpu / n * 1e3, 2)}


SWEEP_SETTINGS = [
    ("medium (FACTS)", {"x264_preset": "medium", "x264_params": ""}, 22),
    ("medium aq-mode=0", {"x264_preset": "medium", "x264_params": "aq-mode=0"}, 26),
    ("medium no-deblock", {"x264_preset": "medium", "x264_params": "no-deblock=1"}, 23),
    ("medium no-psy", {"x264_preset": "medium", "x264_params": "no-psy=1"}, 23),
    ("medium trellis=2", {"x264_preset": "medium", "x264_params": "trellis=2"}, 23),
    ("medium no-8x8dct", {"x264_preset": "medium", "x264_params": "no-8x8dct=1"}, 23),
    ("medium tune=stillimage", {"x264_preset": "medium", "x264_tune": "stillimage"}, 23),
    ("faster", {"x264_preset": "faster", "x264_params": ""}, 23),
    ("veryfast trellis=1", {"x264_preset": "veryfast", "x264_params": "trellis=1"}, 22),
    ("veryfast trellis=1 no-deblock", {"x264_preset": "veryfast", "x264_params": "trellis=1:no-deblock=1"}, 22),
    ("veryfast (default)", {"x264_preset": "veryfast", "x264_params": ""}, 22),
    ("veryfast aq-mode=0", {"x264_preset": "veryfast", "x264_params": "aq-mode=0"}, 26),
    ("veryfast no-deblock", {"x264_preset": "veryfast", "x264_params": "no-deblock=1"}, 22),
    ("veryfast tune=stillimage", {"x264_preset": "veryfast", "x264_tune": "stillimage"}, 22),
    ("veryfast tune=ssim", {"x264_preset": "veryfast", "x264_tune": "ssim"}, 17),
    ("veryfast aq-mode=2", {"x264_preset": "veryfast", "x264_params": "aq-mode=2"}, 17),
    ("veryfast aq-mode=3", {"x264_preset": "veryfast", "x264_params": "aq-mode=3"}, 17),
    ("veryfast aq-mode=2 aq-strength=1.5", {"x264_preset": "veryfast", "x264_params": "aq-mode=2:aq-strength=1.5"}, 17),
] + [
    (f"veryfast aq-mode={m} aq-strength={a}", {"x264_preset": "veryfast", "x264_params": f"aq-mode={m}:aq-strength={a}"},
     start)
    for m, a, start in ((2, 0.3, 24), (2, 0.4, 23), (2, 0.5, 21), (2, 0.6, 21), (2, 0.7, 20), (2, 0.8, 19),
                        (3, 0.5, 21), (3, 0.7, 19), (1, 0.5, 23))
] + [
    ("superfast", {"x264_preset": "superfast", "x264_params": ""}, 24),
    ("ultrafast", {"x264_preset": "ultrafast", "x264_params": ""}, 28),
    ("2 px/module 384x384 medium", {"x264_preset": "medium", "x264_params": "", "pixels_per_module": 2,
                                    "width": 384, "height": 384}, 26),
    ("v40-M medium", {"x264_preset": "medium", "x264_params": "", "qr_ec_level": "M"}, 25),
    ("v30-L 160x160 medium", {"x264_preset": "medium", "x264_params": "", "qr_version": 30,
                              "width": 160, "height": 160}, 24),
]


def bench_sweep(n: int, tmp: Path, settings: list) -> list[dict]:
    results = []
    for label, overrides, start_crf in settings:
        params = replace(DEFAULT_VIDEO_PARAMS, **overrides)
        payloads = payloads_for(params, n)
        lumas = [qr_video._render_checked(p, params).tobytes() for p in payloads]
        rows, fails, crf = [], 0, start_crf
        while fails < 2 and crf <= 51:
            row = trial(replace(params, crf=crf), lumas, payloads, tmp)
            rows.append(row)
            log(f"sweep {label}: {row}")
            fails = fails + 1 if row["ok"] < row["n"] else 0
            crf += 1
        ok = {r["crf"]: r["ok"] == r["n"] for r in rows}
        margin = [c for c in ok if ok[c] and ok.get(c + 1) and ok.get(c + 2)]
        best = max(margin) if margin else None
        best_row = next((r for r in rows if r["crf"] == best), None)
        results.append({"setting": label, "overrides": overrides, "payload_bytes": params.payload_capacity_bytes,
                        "margin_crf": best,
                        "margin_mp4_bytes_per_payload_byte": best_row and best_row["mp4_bytes_per_payload_byte"],
                        "rows": rows})
    return results


# -- 3. decode -----------------------------------------------------------------------------------


def bench_decode(n: int, tmp: Path) -> list[dict]:
    import zxingcpp

    fmt = zxingcpp.BarcodeFormat.QRCode
    options = {
        "reader (is_pure + FixedThreshold, fallback)": None,
        "zxing defaults": {},
        "no rotate/downscale/invert": {"try_rotate": False, "try_downscale": False, "try_invert": False},
        "is_pure + LocalAverage": {"try_rotate": False, "try_downscale": False, "try_invert": False,
                                   "is_pure": True},
        "is_pure + GlobalHistogram": {"try_rotate": False, "try_downscale": False, "try_invert": False,
                                      "is_pure": True, "binarizer": zxingcpp.Binarizer.GlobalHistogram},
    }
    out = []
    base = DEFAULT_VIDEO_PARAMS
    payloads = payloads_for(base, n, seed=2)
    lumas = [qr_video._render_checked(p, base).tobytes() for p in payloads]
    for crf in range(base.crf, base.crf + 5):
        params = replace(base, crf=crf)
        path = tmp / "decode.mp4"
        k = mp4_writer.encode_lumas(lumas, path, params)
        video = mp4_writer.read_sample_table(path, k)
        data = path.read_bytes()
        reader = FrameReader(memoryview(data), extradata=video.extradata, sample_offsets=video.sample_offsets,
                             sample_sizes=video.sample_sizes, prefer_hardware=False)
        order = list(range(k))
        random.Random(3).shuffle(order)
        dec_ms, frames = [], {}
        for i in order:  # random order: every read is a cold seek
            t0 = time.perf_counter()
            frames[i] = reader.decode_frame(i)
            dec_ms.append((time.perf_counter() - t0) * 1e3)
        row = {"crf": crf, "n": k, "h264_decode_ms_p50": round(statistics.median(dec_ms), 3),
               "h264_decode_ms_p90": round(float(np.percentile(dec_ms, 90)), 3), "qr": {}}
        for label, kw in options.items():
            ms, ok = [], 0
            for i in order:
                t0 = time.perf_counter()
                if kw is None:
                    try:
                        got = reader.decode_qr(frames[i], i)
                    except Exception:  # noqa: BLE001
                        got = None
                else:
                    found = zxingcpp.read_barcodes(frames[i], formats=fmt, **kw)
                    got = found[0].bytes if len(found) == 1 else None
                ms.append((time.perf_counter() - t0) * 1e3)
                ok += got == payloads[i]
            row["qr"][label] = {"ok": ok, "ms_p50": round(statistics.median(ms), 3),
                                "ms_p90": round(float(np.percentile(ms, 90)), 3)}
        # the frame reader's whole path, random order, fresh reader
        t0 = time.perf_counter()
        exact = 0
        for i in order:
            try:
                exact += reader.read_payload(i) == payloads[i]
            except FrameDecodeError:
                pass
        row["read_payload_ms_mean"] = round((time.perf_counter() - t0) / k * 1e3, 3)
        row["read_payload_exact"] = exact
        reader.close()
        log(f"decode crf {crf}: {row}")
        out.append(row)
    return out


THREAD_VARIANTS = [("1 slice (default)", ""), ("2 slices", ":slices=2"), ("4 slices", ":slices=4"),
                   ("CAVLC, 1 slice", ":cabac=0"), ("CAVLC, 2 slices", ":cabac=0:slices=2")]


def bench_decode_threads(n: int, tmp: Path) -> dict:
    """H.264 decode time of the default frames against slices and entropy coding, with FFmpeg's
    slice threads (1 or 2), and two decoder contexts on two Python threads (does PyAV's decode
    let another thread run?). Every decoded frame's QR code is checked against its payload."""
    import threading

    import av
    import zxingcpp

    base = DEFAULT_VIDEO_PARAMS
    payloads = payloads_for(base, n, seed=4)
    lumas = [qr_video._render_checked(p, base).tobytes() for p in payloads]
    rows = []
    for label, extra in THREAD_VARIANTS:
        params = replace(base, x264_params=base.x264_params + extra)
        path = tmp / "threads.mp4"
        k = mp4_writer.encode_lumas(lumas, path, params)
        video = mp4_writer.read_sample_table(path, k)
        data = path.read_bytes()
        samples = [data[o:o + z] for o, z in zip(video.sample_offsets, video.sample_sizes)]
        row = {"variant": label, "x264_params": params.x264_params,
               "mp4_bytes_per_frame": round(len(data) / k), "decode": {}}
        for threads in (1, 2):
            ctx = av.CodecContext.create("h264", "r")
            ctx.extradata = video.extradata
            ctx.thread_type, ctx.thread_count = ("SLICE" if threads > 1 else "NONE"), threads
            ctx.open()
            ms, exact = [], 0
            for i, sample in enumerate(samples):
                t0 = time.perf_counter()
                frame = ctx.decode(av.Packet(sample))[-1]
                ms.append((time.perf_counter() - t0) * 1e3)
                luma = np.ascontiguousarray(frame.to_ndarray()[:base.height, :base.width])
                found = zxingcpp.read_barcodes(luma, formats=zxingcpp.BarcodeFormat.QRCode)
                exact += len(found) == 1 and found[0].bytes == payloads[i]
            row["decode"][f"{threads} slice thread{'s' if threads > 1 else ''}"] = {
                "ms_p50": round(statistics.median(ms), 3), "exact": f"{exact}/{k}"}
        log(f"decode threads {label}: {row}")
        rows.append(row)
    # two contexts on two Python threads, default frames
    path = tmp / "threads.mp4"
    k = mp4_writer.encode_lumas(lumas, path, base)
    video = mp4_writer.read_sample_table(path, k)
    data = path.read_bytes()
    samples = [data[o:o + z] for o, z in zip(video.sample_offsets, video.sample_sizes)] * 3

    def context():
        ctx = av.CodecContext.create("h264", "r")
        ctx.extradata = video.extradata
        ctx.thread_type, ctx.thread_count = "NONE", 1
        ctx.open()
        return ctx

    def decode_all(ctx, part):
        for sample in part:
            ctx.decode(av.Packet(sample))

    t0 = time.perf_counter()
    decode_all(context(), samples)
    one = time.perf_counter() - t0
    half = len(samples) // 2
    workers = [threading.Thread(target=decode_all, args=(context(), samples[:half])),
               threading.Thread(target=decode_all, args=(context(), samples[half:]))]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    two = time.perf_counter() - t0
    return {"variants": rows, "two_python_threads": {"frames": len(samples), "one_thread_s": round(one, 3),
                                                    "two_threads_s": round(two, 3), "speedup": round(one / two, 2)}}


CONFIRM_CANDIDATES = [
    ("veryfast", {"x264_preset": "veryfast", "x264_params": ""}, 24),
    ("veryfast trellis=1", {"x264_preset": "veryfast", "x264_params": "trellis=1"}, 25),
    ("veryfast aq-mode=2 aq-strength=0.5", {"x264_preset": "veryfast", "x264_params": "aq-mode=2:aq-strength=0.5"}, 25),
    ("veryfast aq-mode=2 aq-strength=0.6", {"x264_preset": "veryfast", "x264_params": "aq-mode=2:aq-strength=0.6"}, 24),
    ("veryfast aq-mode=3 aq-strength=0.5", {"x264_preset": "veryfast", "x264_params": "aq-mode=3:aq-strength=0.5"}, 25),
]


def bench_confirm(n: int, tmp: Path, seeds: list[int], candidates: list) -> list[dict]:
    """Margin candidates on fresh payload sets (10% of them short) at CRF .. CRF+3."""
    out = []
    for label, overrides, start_crf in candidates:
        base = replace(DEFAULT_VIDEO_PARAMS, **overrides)
        for seed in seeds:
            rng = random.Random(seed)
            cap = base.payload_capacity_bytes
            payloads = [rng.randbytes(cap if i % 10 else rng.randint(1, cap)) for i in range(n)]
            lumas = [qr_video._render_checked(p, base).tobytes() for p in payloads]
            for crf in range(start_crf, start_crf + 4):
                row = trial(replace(base, crf=crf), lumas, payloads, tmp)
                row.update(setting=label, seed=seed)
                log(f"confirm: {row}")
                out.append(row)
    return out


# -- 4. QR mask ------------------------------------------------------------------------------------


def bench_masks(n: int, tmp: Path) -> list[dict]:
    out = []
    for mask in (0, 1, 2, 3, 4, 5, 6, 7, None):
        params = replace(DEFAULT_VIDEO_PARAMS, qr_mask=mask)
        payloads = payloads_for(params, n)
        lumas = [qr_video._render_checked(p, params).tobytes() for p in payloads]
        rows = [trial(replace(params, crf=c), lumas, payloads, tmp) for c in (params.crf, params.crf + 2,
                                                                           params.crf + 3)]
        out.append({"qr_mask": mask, "rows": [{k: r[k] for k in ("crf", "ok", "mp4_bytes_per_payload_byte")}
                                              for r in rows]})
        log(f"mask {mask}: {out[-1]}")
    return out


def bench_decode_cost(n: int) -> list[dict]:
    """Decoder-side cost of the entropy coder and the deblocking filter (same frames)."""
    payloads = payloads_for(DEFAULT_VIDEO_PARAMS, n, seed=5)
    out = []
    for label, x264_params in (("default (CABAC, deblock)", ""), ("no-deblock", "no-deblock=1"),
                               ("CAVLC + no-deblock", "no-deblock=1:no-cabac=1")):
        params = replace(DEFAULT_VIDEO_PARAMS, x264_params=x264_params)
        video = qr_video.encode_mp4(payloads, params, n_workers=0)
        reader = FrameReader(video.mp4_bytes, extradata=video.extradata, sample_offsets=video.sample_offsets,
                             sample_sizes=video.sample_sizes, prefer_hardware=False)
        p50s, exact = [], 0
        for rep in range(3):
            ms = []
            for i in range(n):
                t0 = time.perf_counter()
                luma = reader.decode_frame(i)
                ms.append((time.perf_counter() - t0) * 1e3)
                if rep == 0:
                    exact += reader.decode_qr(luma, i) == payloads[i]
            p50s.append(statistics.median(ms))
        reader.close()
        out.append({"setting": label, "mp4_bytes_per_frame": round(video.size_bytes / n),
                    "h264_decode_ms_p50": round(min(p50s), 3), "exact": f"{exact}/{n}"})
        log(f"decode cost: {out[-1]}")
    return out


# -- 5. end to end -------------------------------------------------------------------------------


def bench_e2e(n: int, tmp: Path, workers: list[int]) -> list[dict]:
    payloads = payloads_for(DEFAULT_VIDEO_PARAMS, n, seed=4)
    out, digests = [], set()
    import hashlib

    for w in workers:
        path = tmp / f"e2e_{w}.mp4"
        t0, c0 = time.perf_counter(), time.process_time()
        video = encode_mp4_file(payloads, path, DEFAULT_VIDEO_PARAMS, n_workers=w)
        wall, cpu_main = time.perf_counter() - t0, time.process_time() - c0
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        digests.add(digest)
        row = {"n_frames": n, "render_workers": w, "encode_wall_s": round(wall, 2),
               "encode_frames_per_s": round(n / wall, 1),
               "main_process_cpu_ms_per_frame": round(cpu_main / n * 1e3, 2),
               "mp4_bytes": video.size_bytes,
               "mp4_bytes_per_payload_byte": round(video.size_bytes / sum(map(len, payloads)), 3),
               "sha256": digest[:16]}
        for cw in (0, 2):
            t0 = time.perf_counter()
            bad = check_mp4(path, payloads, DEFAULT_VIDEO_PARAMS, video.extradata, video.sample_offsets,
                            video.sample_sizes, n_workers=cw)
            row[f"check_frames_per_s_workers{cw}"] = round(n / (time.perf_counter() - t0), 1)
            row["check_failures"] = len(bad)
        log(f"e2e: {row}")
        out.append(row)
    out.append({"deterministic_across_worker_counts": len(digests) == 1})
    return out


def select(settings: list, keys: str) -> list:
    """Settings whose label contains one of the comma-separated ``keys`` (all when empty)."""
    if not keys:
        return settings
    return [s for s in settings if any(k in s[0] for k in keys.split(","))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="qr,sweep,confirm,decode,decodecost,mask,e2e")
    ap.add_argument("--n", type=int, default=300, help="random payloads per sweep setting")
    ap.add_argument("--e2e-frames", type=int, default=2000)
    ap.add_argument("--workers", default="0,1,2", help="render worker counts for the e2e part")
    ap.add_argument("--settings", default="", help="comma-separated substrings selecting sweep/confirm settings")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    result: dict = {"command": " ".join(sys.argv), "machine": machine_info(),
                    "default_params": asdict(DEFAULT_VIDEO_PARAMS),
                    "payload_capacity_bytes": DEFAULT_VIDEO_PARAMS.payload_capacity_bytes}
    with tempfile.TemporaryDirectory(prefix="bench_qr_video_") as d:
        tmp = Path(d)
        if "qr" in parts:
            result["qr_encoders"] = bench_qr_encoders(min(args.n, 100))
        if "sweep" in parts:
            result["crf_sweep"] = bench_sweep(args.n, tmp, select(SWEEP_SETTINGS, args.settings))
        if "decode" in parts:
            result["decode"] = bench_decode(args.n, tmp)
        if "confirm" in parts:
            result["confirm_default"] = bench_confirm(args.n, tmp, [10, 11, 12],
                                                      select(CONFIRM_CANDIDATES, args.settings))
        if "decodecost" in parts:
            result["decode_cost"] = bench_decode_cost(args.n)
        if "mask" in parts:
            result["qr_masks"] = bench_masks(args.n, tmp)
        if "threads" in parts:
            result["decode_threads"] = bench_decode_threads(args.n, tmp)
        if "e2e" in parts:
            result["end_to_end"] = bench_e2e(args.e2e_frames, tmp, [int(w) for w in args.workers.split(",")])
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
