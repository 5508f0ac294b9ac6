"""End to end on the shipped Python FAQ: real model, real H.264, real QR, real crypto."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from edge import OpenOptions, open_capsule
from edge.errors import (
    CapsuleFormatError,
    DecryptionError,
    ExpiredCapsuleError,
    FrameDecodeError,
    IntegrityError,
    ModelError,
    NotYetValidError,
    SignatureError,
)
from edge.budget import MemoryBudget
from edge.capsule import verify_capsule
from edge.embedder import QueryEmbedder
from firmware_tools.chunking import TokenizerOffsets, chunk_documents
from firmware_tools.documents import iter_documents

from ..conftest import FAQ_DOCS, ROOT, BUILD_EXPIRES_AT, BUILD_ISSUED_AT, build_test_capsule

QUESTIONS = [json.loads(line) for line in (ROOT / "examples/python-faq/questions.jsonl").read_text().splitlines()
             if line.strip()]
NOW = BUILD_ISSUED_AT.replace(day=15)
MODEL_DIR = ROOT / "models" / "all-MiniLM-L6-v2"


def _open(built, **kwargs):
    kwargs.setdefault("now", NOW)
    return open_capsule(built.path, trusted_keys=[built.publisher_key.public_key()],
                        identities=[built.device_key], **kwargs)


@pytest.fixture(scope="module")
def capsule(faq_capsule):
    with _open(faq_capsule) as opened:
        yield opened


@pytest.mark.parametrize("item", QUESTIONS, ids=[q["question"][:40] for q in QUESTIONS])
def test_faq_question_finds_its_answer_in_top_5(capsule, item):
    hits = capsule.search(item["question"], k=5)
    assert len(hits) == 5
    assert any(item["answer_snippet"] in hit.text and hit.document.endswith(item["file"]) for hit in hits), (
        [(h.document, h.text[:80]) for h in hits])


def test_every_returned_text_is_byte_equal_to_its_source_chunk(capsule, faq_capsule):
    docs = list(iter_documents([FAQ_DOCS]))
    offsets = TokenizerOffsets.from_file(ROOT / "models/all-MiniLM-L6-v2/tokenizer.json")
    chunks = list(chunk_documents(docs, token_offsets=offsets, max_tokens=capsule.manifest.chunk_max_tokens,
                                  overlap_tokens=capsule.manifest.chunk_overlap_tokens))
    assert len(chunks) == capsule.manifest.n_chunks
    seen = 0
    for item in QUESTIONS:
        for hit in capsule.search(item["question"], k=5):
            chunk = chunks[hit.chunk_id]
            assert hit.text.encode("utf-8") == chunk.text.encode("utf-8")
            assert docs[chunk.doc_index].name == hit.document
            assert (hit.char_start, hit.char_end) == (chunk.char_start, chunk.char_end)
            assert docs[chunk.doc_index].text[hit.char_start:hit.char_end] == hit.text
            seen += 1
    assert seen == 5 * len(QUESTIONS)


def test_full_verify_reads_every_chunk_from_frames(faq_capsule):
    report = verify_capsule(faq_capsule.path, trusted_keys=[faq_capsule.publisher_key.public_key()],
                            identities=[faq_capsule.device_key], now=NOW, full=True)
    assert report.n_chunks_checked == report.manifest.n_chunks
    assert report.n_frames_checked == report.manifest.video.n_frames


def test_capsule_has_no_plaintext_copy_of_the_text(faq_capsule):
    data = faq_capsule.path.read_bytes()
    for doc in iter_documents([FAQ_DOCS]):
        for sentence in [s for s in doc.text.split("\n") if len(s) > 40][:20]:
            assert sentence.encode("utf-8") not in data


def test_read_chunk_matches_search_hit(capsule):
    hit = capsule.search(QUESTIONS[0]["question"], k=1)[0]
    again = capsule.read(hit.chunk_id)
    assert again.text == hit.text and again.document == hit.document


def test_build_is_byte_identical_for_same_inputs_keys_seed_and_clock(faq_capsule, tmp_path):
    again = build_test_capsule(FAQ_DOCS, tmp_path / "again.capsule", keys_dir=tmp_path / "keys", name="python-faq")
    assert again.path.read_bytes() == faq_capsule.path.read_bytes()


def test_wrong_device_key_is_refused(faq_capsule):
    with pytest.raises(DecryptionError, match="not for this device"):
        open_capsule(faq_capsule.path, trusted_keys=[faq_capsule.publisher_key.public_key()],
                     identities=[faq_capsule.other_device_key], now=NOW)


def test_untrusted_publisher_is_refused(faq_capsule):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with pytest.raises(SignatureError, match="signed by 0/1 trusted keys"):
        open_capsule(faq_capsule.path, trusted_keys=[Ed25519PrivateKey.generate().public_key()],
                     identities=[faq_capsule.device_key], now=NOW)


def test_tampered_manifest_is_refused(faq_capsule, tmp_path):
    from edge import format as fmt

    data = bytearray(faq_capsule.path.read_bytes())
    header = fmt.parse_header(bytes(data[:64]), file_bytes=len(data))
    mani = fmt.parse_section_table(bytes(data[64:64 + header.table_bytes]), header)["MANI"]
    data[mani.offset + mani.length // 2] ^= 0x01
    bad = tmp_path / "tampered.capsule"
    bad.write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        _open(type(faq_capsule)(**{**faq_capsule.__dict__, "path": bad}))


def test_expired_and_not_yet_valid_are_refused(faq_capsule):
    with pytest.raises(ExpiredCapsuleError, match="expired at 2036-11-01T00:00:00Z"):
        _open(faq_capsule, now=BUILD_EXPIRES_AT)
    with pytest.raises(NotYetValidError, match="not valid before 2026-11-01T00:00:00Z"):
        _open(faq_capsule, now=BUILD_ISSUED_AT.replace(year=2025))


@pytest.mark.parametrize("cut", [1, 4096, 100_000])
def test_truncated_file_is_refused(faq_capsule, tmp_path, cut):
    bad = tmp_path / "truncated.capsule"
    bad.write_bytes(faq_capsule.path.read_bytes()[:-cut])
    with pytest.raises(IntegrityError, match="truncated"):
        _open(type(faq_capsule)(**{**faq_capsule.__dict__, "path": bad}))


def test_missing_model_is_refused_with_its_hash(faq_capsule, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_MODEL_PATH", str(tmp_path))
    with pytest.raises(ModelError, match=_model_sha(faq_capsule)[:12]):
        _open(faq_capsule, options=OpenOptions(model_search_path=[tmp_path]))


def _spy(monkeypatch, owner, name):
    """Count calls of ``owner.name`` and let each one through to the real function."""
    calls = []
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_model_loads_on_a_thread_only_when_the_budget_is_unlimited(faq_capsule, monkeypatch):
    # Unlimited: the session is built on a thread while the sections open (cold start), and the
    # capsule answers as ever. Under a limit, transient peaks borrow the model's reservation, so
    # the model loads after them, on the opening thread.
    started = _spy(monkeypatch, QueryEmbedder, "start_open")
    opened = _spy(monkeypatch, QueryEmbedder, "open")
    with _open(faq_capsule) as capsule:
        unlimited = [(hit.chunk_id, hit.text) for hit in capsule.search("What is Python?", k=3)]
    assert (started, opened) == (["start_open"], [])
    with _open(faq_capsule, budget=_roomy_budget()) as capsule:
        limited = [(hit.chunk_id, hit.text) for hit in capsule.search("What is Python?", k=3)]
    assert (started, opened) == (["start_open"], ["open"])
    assert limited == unlimited


def _roomy_budget() -> MemoryBudget:
    """A limit 1 GiB above what the process holds now: limited, and never the test's constraint
    (a long single-process run, as the emulated aarch64 suite's under QEMU, held over 1 GiB)."""
    from edge.budget import read_process_memory

    return MemoryBudget((read_process_memory().anon_bytes or 0) + (1 << 30))


def _lying_model_dir(root):
    """A model folder whose SHA256SUMS lists the real model's digests over other files."""
    fake = root / "a-fake"
    fake.mkdir()
    (fake / "model.int8.onnx").write_bytes(b"something else")
    (fake / "model.int8.onnx.data").write_bytes(b"")
    shutil.copy(MODEL_DIR / "tokenizer.json", fake / "tokenizer.json")
    shutil.copy(MODEL_DIR / "SHA256SUMS", fake / "SHA256SUMS")
    return fake


@pytest.mark.parametrize("budget", [None, "limited"], ids=["unlimited", "limited"])
def test_a_lying_sha256sums_is_passed_over_for_the_real_model(faq_capsule, tmp_path, budget):
    # Unlimited, the folder is chosen by its listing and hashed on the loading thread; its files
    # differ, so the open searches on as the confirming search does (and finds the real model).
    _lying_model_dir(tmp_path)
    options = OpenOptions(model_search_path=[tmp_path, MODEL_DIR.parent])
    with _open(faq_capsule, options=options, budget=None if budget is None else _roomy_budget()) as capsule:
        assert capsule.embedder.model_path.parent == MODEL_DIR
        assert capsule.search("What is Python?", k=1)[0].text
    with pytest.raises(ModelError, match="no onnx model with sha256"):  # the lying folder alone
        _open(faq_capsule, options=OpenOptions(model_search_path=[tmp_path]))


def test_a_capsule_refused_while_its_model_loads_leaves_no_thread(faq_capsule):
    # The content key fails to unwrap after the model started loading: the open joins the
    # loading thread and drops the half-made session before raising.
    with pytest.raises(DecryptionError, match="not for this device"):
        open_capsule(faq_capsule.path, trusted_keys=[faq_capsule.publisher_key.public_key()],
                     identities=[faq_capsule.other_device_key], now=NOW)
    assert not [t for t in threading.enumerate() if t.name == "edge-model-load"]


def _model_sha(built):
    return verify_capsule(built.path, trusted_keys=[built.publisher_key.public_key()], now=NOW,
                          full=False).manifest.model.sha256


def _flip_sample_bytes(data: bytearray, offset: int, n_bytes: int) -> None:
    for i in range(offset + 40, offset + n_bytes - 10, 37):
        data[i] ^= 0xFF


def _sample_in_file(capsule, frame_index: int) -> tuple[int, int]:
    """(file offset, bytes) of one frame's sample."""
    frames = capsule._frames
    return (capsule._cf.sections["VIDE"].offset + int(frames.sample_offsets[frame_index]),
            int(frames.sample_bytes[frame_index]))


def test_altered_video_frame_is_refused_at_open(faq_capsule, tmp_path):
    """Flip bytes inside one frame's sample: opened by path, VIDE is hashed first, so the open
    is refused before any sample reaches FFmpeg; full verify refuses too."""
    data = bytearray(faq_capsule.path.read_bytes())
    with _open(faq_capsule) as good:
        _flip_sample_bytes(data, *_sample_in_file(good, 1))
    bad = tmp_path / "video.capsule"
    bad.write_bytes(bytes(data))
    built = type(faq_capsule)(**{**faq_capsule.__dict__, "path": bad})
    with pytest.raises(IntegrityError, match="VIDE section sha256"):
        _open(built)
    with pytest.raises(IntegrityError, match="VIDE section sha256"):
        verify_capsule(bad, trusted_keys=[faq_capsule.publisher_key.public_key()], now=NOW, full=True)


def test_sample_changed_after_open_is_refused_before_decoding(faq_capsule, tmp_path):
    """Change one sample in place after the open (another process writing the file): reading
    that frame is IntegrityError from its per-sample digest; other frames still serve."""
    path = tmp_path / "video.capsule"
    path.write_bytes(faq_capsule.path.read_bytes())
    built = type(faq_capsule)(**{**faq_capsule.__dict__, "path": path})
    with _open(built) as capsule:
        offset, n_bytes = _sample_in_file(capsule, 1)
        chunk_in_frame = int(capsule._frames.first_chunk_ids[1])
        data = bytearray(path.read_bytes())
        _flip_sample_bytes(data, offset, n_bytes)
        with open(path, "r+b") as f:  # same inode, same size: what the open's descriptor reads
            f.seek(offset)
            f.write(data[offset:offset + n_bytes])
        with pytest.raises(IntegrityError, match="frame 1: sample sha256"):
            capsule.read(chunk_in_frame)
        assert capsule.read(0).text


def test_a_sample_changed_after_open_fails_a_two_thread_read_at_that_frame(faq_capsule, tmp_path):
    from edge.hits import StageTimings

    path = tmp_path / "video.capsule"
    path.write_bytes(faq_capsule.path.read_bytes())
    built = type(faq_capsule)(**{**faq_capsule.__dict__, "path": path})
    with _open(built) as capsule:
        offset, n_bytes = _sample_in_file(capsule, 3)
        data = bytearray(path.read_bytes())
        _flip_sample_bytes(data, offset, n_bytes)
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(data[offset:offset + n_bytes])
        with pytest.raises(IntegrityError, match="frame 3: sample sha256"):
            capsule._read_frames([0, 1, 2, 3, 4, 5, 6], StageTimings())
        capsule.clear_cache()
        assert sorted(capsule._read_frames([0, 1, 2, 4], StageTimings())) == [0, 1, 2, 4]  # the others serve


def test_hybrid_frame_prefetch_gives_the_same_hits_and_decodes_each_frame_once(faq_capsule, monkeypatch):
    """While the query is embedded, the helper reads the frames of the best lexical hits
    (``Capsule._prefetch_frames``): the hits are exactly those of a search without it, no frame is
    decoded twice, and the prefetch does run."""
    import edge.opened
    from edge.frames import FrameReader

    decoded: list[int] = []
    prefetched: list[int] = []
    real_decode, real_prefetch = FrameReader.decode_frame, edge.opened.Capsule._prefetch_frames

    def counting_decode(self, frame_index):
        decoded.append(frame_index)
        return real_decode(self, frame_index)

    def recording_prefetch(self, prefetch, chunk_ids):
        real_prefetch(self, prefetch, chunk_ids)
        prefetched.extend(prefetch.outcomes)

    monkeypatch.setattr(FrameReader, "decode_frame", counting_decode)
    monkeypatch.setattr(edge.opened.Capsule, "_prefetch_frames", recording_prefetch)

    def answers(capsule):
        out = []
        for item in QUESTIONS:
            capsule.clear_cache()
            decoded.clear()
            hits = capsule.search(item["question"], k=10)
            frames = {h.frame_index for h in hits}
            assert len(decoded) == len(set(decoded)) == capsule.last_timings.n_frames_decoded
            assert frames <= set(decoded) and len(decoded) <= len(frames) + edge.opened.PREFETCH_FRAMES
            out.append([(h.chunk_id, h.score, h.text, h.matched, h.highlights) for h in hits])
        return out

    with _open(faq_capsule) as capsule:
        with_prefetch = answers(capsule)
    assert len(prefetched) >= len(QUESTIONS)  # it ran, and read at least one frame a search
    prefetched.clear()
    monkeypatch.setattr(edge.opened, "PREFETCH_FRAMES", 0)
    with _open(faq_capsule) as capsule:
        assert answers(capsule) == with_prefetch
    assert not prefetched


def test_a_sample_changed_after_open_fails_the_hybrid_search_that_prefetched_it(faq_capsule, tmp_path):
    """The frame of the best lexical hit, read ahead on the helper thread, fails its per-sample
    digest: the search raises that IntegrityError (not another, not none), and the capsule goes
    on serving its other frames."""
    path = tmp_path / "video.capsule"
    path.write_bytes(faq_capsule.path.read_bytes())
    built = type(faq_capsule)(**{**faq_capsule.__dict__, "path": path})
    question = QUESTIONS[0]["question"]
    with _open(built) as capsule:
        best_lexical = capsule.search(question, k=1, mode="lexical")[0]
        hybrid = capsule.search(question, k=10)
        assert best_lexical.chunk_id in {h.chunk_id for h in hybrid}
        frame = best_lexical.frame_index
        offset, n_bytes = _sample_in_file(capsule, frame)
        data = bytearray(path.read_bytes())
        _flip_sample_bytes(data, offset, n_bytes)
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(data[offset:offset + n_bytes])
        capsule.clear_cache()
        with pytest.raises(IntegrityError, match=f"frame {frame}: sample sha256"):
            capsule.search(question, k=10)
        other = next(c for c in range(capsule.manifest.n_chunks) if capsule._frames.locate(c)[0] != frame)
        assert capsule.read(other).text


def test_frames_read_on_two_threads_match_one_thread(faq_capsule, monkeypatch, caplog):
    from edge.frames import FrameReader

    def answers(capsule):
        out = []
        for item in QUESTIONS[:8]:
            capsule.clear_cache()
            out.append([(h.chunk_id, h.score, h.text) for h in capsule.search(item["question"], k=10)])
            assert capsule.last_timings.n_frames_decoded >= 2
        return out

    with _open(faq_capsule) as capsule:
        two_threads = answers(capsule)
        assert capsule._twin_reader is not None  # the helper decoded with a decoder of its own

    def no_second_decoder(self):
        raise FrameDecodeError("cannot open video decoder h264 (test: one decoder only)")

    monkeypatch.setattr(FrameReader, "twin", no_second_decoder)
    with caplog.at_level("WARNING", logger="edge.capsule"), _open(faq_capsule) as capsule:
        assert answers(capsule) == two_threads
    assert sum("frames are read on one thread" in r.getMessage() for r in caplog.records) == 1


def test_section_from_another_capsule_is_refused(faq_capsule, tiny_capsule, tmp_path):
    """Swap DOCS for another capsule's DOCS of equal length: the digest in the signed manifest catches it."""
    from edge import format as fmt

    def sections(path):
        data = path.read_bytes()
        header = fmt.parse_header(data[:64], file_bytes=len(data))
        return data, fmt.parse_section_table(data[64:64 + header.table_bytes], header)

    data, table = sections(faq_capsule.path)
    other, other_table = sections(tiny_capsule.path)
    mixed = bytearray(data)
    ftab, other_ftab = table["FTAB"], other_table["FTAB"]
    n = min(ftab.length, other_ftab.length)
    mixed[ftab.offset:ftab.offset + n] = other[other_ftab.offset:other_ftab.offset + n]
    bad = tmp_path / "mixed.capsule"
    bad.write_bytes(bytes(mixed))
    with pytest.raises(IntegrityError, match="FTAB section sha256"):
        _open(type(faq_capsule)(**{**faq_capsule.__dict__, "path": bad}))


def test_not_a_capsule_is_refused(tmp_path, faq_capsule):
    bad = tmp_path / "x.capsule"
    shutil.copy(ROOT / "README.md", bad)
    with pytest.raises(CapsuleFormatError, match="bad magic"):
        _open(type(faq_capsule)(**{**faq_capsule.__dict__, "path": bad}))


def test_passphrase_opens_and_wrong_passphrase_is_refused(tmp_path):
    from edge.keys import Passphrase

    from ..conftest import TINY_DOCS

    built = build_test_capsule(TINY_DOCS / "good", tmp_path / "pass.capsule", keys_dir=tmp_path / "keys",
                               recipients=[], passphrase=Passphrase(b"field unit 7"), scrypt_log_n=12)
    trusted = [built.publisher_key.public_key()]
    with open_capsule(built.path, trusted_keys=trusted, identities=[Passphrase(b"field unit 7")], now=NOW) as c:
        assert c.search("What is Python?", k=1)[0].text
    with pytest.raises(DecryptionError):
        open_capsule(built.path, trusted_keys=trusted, identities=[Passphrase(b"field unit 8")], now=NOW)
    with pytest.raises(DecryptionError):  # a device key does not open a passphrase-only capsule
        open_capsule(built.path, trusted_keys=trusted, identities=[built.device_key], now=NOW)
