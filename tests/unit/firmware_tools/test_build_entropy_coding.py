"""--entropy-coding cavlc: H.264 frames that decode faster for more bytes, read as any other.

The stream's picture parameter set says which entropy coder it uses (ISO/IEC 14496-10 §7.3.2.2:
``pic_parameter_set_id`` ue(v), ``seq_parameter_set_id`` ue(v), then ``entropy_coding_mode_flag``
u(1), 1 for CABAC); it is read here from the avcC record the manifest carries.
"""

from __future__ import annotations

from edge import open_capsule
from firmware_tools.qr_video import CAVLC_VIDEO_PARAMS

from ...conftest import FAQ_DOCS, build_test_capsule, run_cli


def _entropy_coding_mode_flag(avcc: bytes) -> int:
    """``entropy_coding_mode_flag`` of the first PPS in an avcC record (ISO/IEC 14496-15 §5.3.3)."""
    at = 6
    for _ in range(avcc[5] & 0x1F):  # the SPSs, skipped
        at += 2 + int.from_bytes(avcc[at:at + 2], "big")
    assert avcc[at] >= 1, "no PPS"
    length = int.from_bytes(avcc[at + 1:at + 3], "big")
    pps = avcc[at + 3:at + 3 + length]
    bits = "".join(f"{byte:08b}" for byte in pps[1:])  # after the NAL header
    pos = 0
    for _ in range(2):  # two ue(v): pic and seq parameter set ids
        zeros = bits.index("1", pos) - pos
        pos += 2 * zeros + 1
    return int(bits[pos])


def test_a_cavlc_capsule_reads_the_same_text_from_a_cavlc_stream(tmp_path, faq_capsule):
    cavlc = build_test_capsule(FAQ_DOCS, tmp_path / "cavlc.capsule", keys_dir=tmp_path / "keys",
                               video_params=CAVLC_VIDEO_PARAMS)
    cabac = faq_capsule  # the same documents, keys and defaults, CABAC
    texts, flags = [], []
    for built in (cavlc, cabac):
        with open_capsule(built.path, trusted_keys=[built.publisher_key.public_key()],
                          identities=[built.device_key]) as capsule:
            texts.append([hit.text for hit in capsule.export()])
            flags.append(_entropy_coding_mode_flag(capsule.manifest.video.extradata))
            assert capsule.manifest.video.profile == "High"
    assert flags == [0, 1]  # CAVLC, CABAC
    assert texts[0] == texts[1] and len(texts[0]) == cavlc.result.n_chunks
    assert cavlc.result.section_bytes["VIDE"] > cabac.result.section_bytes["VIDE"]  # CAVLC costs bytes


def test_cavlc_is_refused_for_hevc_as_a_usage_error(tmp_path):
    proc = run_cli("firmware_tools", "build", str(FAQ_DOCS), "-o", str(tmp_path / "x.capsule"), "--codec", "hevc",
                   "--entropy-coding", "cavlc", "--signing-key", "k", "--recipient", "r", "--expires", "+1d")
    assert proc.returncode == 2 and "HEVC codes with CABAC only" in proc.stderr and "Traceback" not in proc.stderr
