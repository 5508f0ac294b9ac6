"""--qr-version: the same text in frames of another QR version, read back as any other capsule."""

from __future__ import annotations

from edge import open_capsule
from firmware_tools.qr_video import DEFAULT_VIDEO_PARAMS, with_qr_version

from ...conftest import FAQ_DOCS, build_test_capsule


def test_a_version_40_capsule_holds_the_same_text_in_fewer_larger_frames(tmp_path, faq_capsule):
    dense = build_test_capsule(FAQ_DOCS, tmp_path / "v40.capsule", keys_dir=tmp_path / "keys",
                               video_params=with_qr_version(DEFAULT_VIDEO_PARAMS, 40))
    texts, videos, hits = [], [], []
    for built in (dense, faq_capsule):  # the same documents, keys and defaults: version 24
        with open_capsule(built.path, trusted_keys=[built.publisher_key.public_key()],
                          identities=[built.device_key]) as capsule:
            texts.append([hit.text for hit in capsule.export()])
            videos.append(capsule.manifest.video)
            hits.append([(hit.chunk_id, hit.text) for hit in capsule.search("How do I install a package?", k=5)])
    assert texts[0] == texts[1] and len(texts[0]) == dense.result.n_chunks
    assert hits[0] == hits[1]
    assert [(v.qr_version, v.width, v.height) for v in videos] == [(40, 192, 192), (24, 128, 128)]
    assert videos[1].n_frames > 2 * videos[0].n_frames  # 1,171 payload bytes a frame against 2,953
    assert dense.result.section_bytes["VIDE"] < faq_capsule.result.section_bytes["VIDE"]
