"""QueryEmbedder and find_model_dir against the committed int8 model (no mocks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.embedder import (
    DEFAULT_MAX_TOKENS,
    EXPECTED_DIM,
    PREFIX_CHARS_PER_TOKEN,
    QueryEmbedder,
    find_model_dir,
    model_identity,
)
from edge.errors import ModelError

from ...conftest import absent_onnx_device

REPO_PATH = Path(__file__).resolve().parents[3]
MODELS_PATH = REPO_PATH / "models"
MODEL_DIR = MODELS_PATH / "all-MiniLM-L6-v2"


def _listed_sha256(filename: str) -> str:
    for line in (MODEL_DIR / "SHA256SUMS").read_text(encoding="ascii").splitlines():
        digest, name = line.split()
        if name == filename:
            return digest
    raise AssertionError(f"SHA256SUMS does not list {filename}")


MODEL_SHA256 = model_identity(_listed_sha256("model.int8.onnx"), _listed_sha256("model.int8.onnx.data"))
TOKENIZER_SHA256 = _listed_sha256("tokenizer.json")


@pytest.fixture(scope="module")
def embedder() -> QueryEmbedder:
    return QueryEmbedder.open(
        MODEL_DIR, expected_sha256=MODEL_SHA256, expected_tokenizer_sha256=TOKENIZER_SHA256
    )


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray]:
    with np.load(MODEL_DIR / "reference_embeddings.npz", allow_pickle=False) as ref:
        return [str(t) for t in ref["sentences"]], ref["embeddings"].astype(np.float32)


def _long_text(reference: tuple[list[str], np.ndarray]) -> str:
    return " ".join(reference[0] * 3)


def test_properties(embedder: QueryEmbedder) -> None:
    assert embedder.dim == EXPECTED_DIM == 384
    assert embedder.sha256 == MODEL_SHA256
    assert embedder.max_tokens == DEFAULT_MAX_TOKENS == 256
    assert embedder.model_path == MODEL_DIR / "model.int8.onnx"
    assert embedder.tokenizer_path == MODEL_DIR / "tokenizer.json"
    assert embedder.tokenizer_sha256 == TOKENIZER_SHA256
    assert embedder.metadata["edge.dim"] == "384"
    assert embedder.metadata["edge.pooling"] == "mean"


def test_parity_with_fp32_reference(
    embedder: QueryEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    sentences, fp32 = reference
    assert len(sentences) >= 30 and fp32.shape == (len(sentences), 384)
    cos = (embedder.embed(sentences) * fp32).sum(axis=1)  # both unit norm
    assert cos.mean() >= 0.99, cos.mean()
    assert cos.min() >= 0.98, cos.min()


def test_output_shape_dtype_unit_norm(
    embedder: QueryEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts = reference[0][:5] + ["", "a", _long_text(reference)]
    vectors = embedder.embed(texts)
    assert vectors.shape == (len(texts), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_list_embed_equals_one_by_one(
    embedder: QueryEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts = reference[0]
    together = embedder.embed(texts)
    one_by_one = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    reversed_ = embedder.embed(texts[::-1])
    np.testing.assert_allclose(reversed_[::-1], together, atol=1e-5)


def test_padded_batches_restore_order(
    embedder: QueryEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    # batch_size > 1 pads and runs texts together; dynamic int8 activation
    # scales are per batch tensor, so vectors move a little, but each row
    # must still be its own text's vector.
    texts = reference[0]
    single = embedder.embed(texts)
    batched = embedder.embed(texts, batch_size=8)
    assert batched.shape == single.shape
    similarity = batched @ single.T
    assert (similarity.argmax(axis=1) == np.arange(len(texts))).all()
    assert np.diag(similarity).min() >= 0.95


def test_truncates_at_max_tokens(
    embedder: QueryEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    from tokenizers import Tokenizer

    long_text = _long_text(reference)
    assert embedder.token_count(long_text) > 1000
    offsets = embedder.tokenize_offsets(long_text)
    prefix = long_text[: offsets[DEFAULT_MAX_TOKENS - 3][1]]  # 254 content tokens
    assert embedder.token_count(prefix) == DEFAULT_MAX_TOKENS
    # The prefix is exactly what the tokenizer's own truncation keeps.
    hf = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    hf.no_padding()
    hf.enable_truncation(max_length=DEFAULT_MAX_TOKENS)
    plain = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    plain.no_padding()
    plain.no_truncation()
    assert hf.encode(long_text).ids == plain.encode(prefix).ids
    np.testing.assert_array_equal(embedder.embed([long_text]), embedder.embed([prefix]))
    assert not np.allclose(embedder.embed([long_text]), embedder.embed([long_text[:200]]))


def test_weights_left_mapped_give_the_same_embeddings(
    embedder: QueryEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    # Without prepacking onnxruntime multiplies from the mapped weights file: less anonymous
    # memory, the same int8 arithmetic (bit-identical on the x86 machine of 2026-12-07; compared
    # by cosine here, since a CPU's int8 kernels are its own).
    mapped = QueryEmbedder.open(MODEL_DIR, expected_sha256=MODEL_SHA256, prepack_weights=False)
    assert "weights mapped" in mapped.engine and "weights mapped" not in embedder.engine
    sentences = reference[0][:8]
    cos = np.sum(mapped.embed(sentences) * embedder.embed(sentences), axis=1)
    assert cos.min() > 0.9999, cos


_FRAGMENTS = (
    "valve", "pressure", "E-4021", "6ES7 214-1AG40-0XB0", "max_wal_senders", "0x1F", "v2.3.1", "日本語の文書",
    "東京", "Störung", "e\u0301te\u0301", "\u0301\u0308", "naïve", "Ελληνικά", "русский", "العربية", "😀", "👍🏽",
    "\x00", "\x07", "\u200b", "\u00ad", "\xa0", "\u3000", "\t", "\n", " ", "  ", ".", ",", "(", "]", "-", "_", "/",
)


def _random_text(rng: np.random.Generator, n_chars: int) -> str:
    """Words, identifiers, CJK, combining marks, control and format characters, emoji,
    whitespace and words longer than WordPiece's 100-character limit, glued or spaced."""
    parts: list[str] = []
    size = 0
    while size < n_chars:
        roll = rng.random()
        if roll < 0.05:
            part = "".join(rng.choice(list("abcdefghij"), size=int(rng.integers(90, 130))))
        elif roll < 0.15:
            part = "".join(chr(int(c)) for c in rng.integers(0x4E00, 0x9FFF, size=int(rng.integers(1, 12))))
        elif roll < 0.6:
            part = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(1, 12))))
        else:
            part = str(rng.choice(_FRAGMENTS))
        parts.append(part + ("" if rng.random() < 0.2 else str(rng.choice([" ", " ", "\n", ", ", "-"]))))
        size += len(parts[-1])
    return "".join(parts)[:n_chars]


def _whole_text_ids(embedder: QueryEmbedder, text: str) -> list[int]:
    """The ids of the whole text, truncated as the tokenizer's LongestFirst truncation does."""
    ids = embedder._tokenizer.encode(text).ids
    return ids if len(ids) <= embedder.max_tokens else ids[: embedder.max_tokens - 1] + [embedder._sep_id]


@pytest.mark.parametrize("max_tokens", [16, DEFAULT_MAX_TOKENS])
def test_a_long_text_tokenized_by_prefix_gives_the_whole_texts_ids(max_tokens: int) -> None:
    embedder = QueryEmbedder.open(MODEL_DIR, max_tokens=max_tokens)
    assert embedder._prefix_tokenization  # BERT normalizer, pre-tokenizer and WordPiece
    rng = np.random.default_rng(20261207)
    first_cut = PREFIX_CHARS_PER_TOKEN * max_tokens
    lengths = [first_cut - 1, first_cut, first_cut + 1, 2 * first_cut, 5 * first_cut, 17 * first_cut]
    if max_tokens == DEFAULT_MAX_TOKENS:
        lengths.pop()  # 70k characters: the 64 KiB test below has one
    texts = [_random_text(rng, int(rng.choice(lengths))) for _ in range(300 if max_tokens == 16 else 40)]
    # few tokens per character at first: the prefix must grow, or the whole text be read
    texts += [" " * (first_cut + 7) + _random_text(rng, 3 * first_cut), "\u0301" * (5 * first_cut) + "tail words",
              "x" * (first_cut + 50) + " after one long word"]
    # the first cut splits the word that holds the kept tokens' end: whole, that word is one
    # [UNK] (over 100 characters); cut, its 60 characters are several word pieces
    head = "a " * (max_tokens - 4)
    for word in ("abcdefghij" * 12, "pressure" * 15):
        texts.append(head + " " * (first_cut - len(head) - 60) + word + " tail words here")
    for text in texts:
        assert embedder._encode_ids(text) == _whole_text_ids(embedder, text), text[:80]


def test_a_64_kib_question_is_tokenized_by_its_first_4096_characters(
    embedder: QueryEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = embedder._tokenizer
    seen: list[int] = []

    class Spy:
        def encode(self, text: str):
            seen.append(len(text))
            return whole.encode(text)

    text = _random_text(np.random.default_rng(7), 64 * 1024)
    expected = _whole_text_ids(embedder, text)
    monkeypatch.setattr(embedder, "_tokenizer", Spy())
    assert embedder._encode_ids(text) == expected
    assert seen == [PREFIX_CHARS_PER_TOKEN * DEFAULT_MAX_TOKENS] == [4096]


def test_smaller_max_tokens() -> None:
    small = QueryEmbedder.open(MODEL_DIR, max_tokens=16)
    text = "How can I find out what package produced a particular file on my Debian system?"
    offsets = small.tokenize_offsets(text)
    assert len(offsets) > 14
    prefix = text[: offsets[13][1]]
    np.testing.assert_array_equal(small.embed([text]), small.embed([prefix]))


def test_token_count_and_offsets(embedder: QueryEmbedder) -> None:
    text = "Why is it called Python? Unbelievably, it's the comedy group."
    offsets = embedder.tokenize_offsets(text)
    assert embedder.token_count(text) == len(offsets) + 2
    assert offsets[0] == (0, 3) and text[0:3] == "Why"
    previous_end = 0
    for start, end in offsets:
        assert previous_end <= start < end <= len(text)
        previous_end = end
    assert embedder.token_count("") == 2
    assert embedder.tokenize_offsets("") == []


def test_wrong_sha256_raises_model_error() -> None:
    wrong = "0" * 64
    with pytest.raises(ModelError) as info:
        QueryEmbedder.open(MODEL_DIR, expected_sha256=wrong)
    message = str(info.value)
    assert "model.int8.onnx" in message and wrong in message and MODEL_SHA256 in message
    wording = message.replace(str(MODEL_DIR / "model.int8.onnx"), "")
    assert wording == wording.lower() and "\n" not in message


def test_wrong_tokenizer_sha256_raises_model_error() -> None:
    with pytest.raises(ModelError, match=f"tokenizer.json has sha256 {TOKENIZER_SHA256}"):
        QueryEmbedder.open(MODEL_DIR, expected_tokenizer_sha256="1" * 64)


def test_missing_dir_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        QueryEmbedder.open(tmp_path / "nope")


def test_missing_model_file_raises_model_error(tmp_path: Path) -> None:
    shutil.copyfile(MODEL_DIR / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ModelError, match="model.int8.onnx is missing"):
        QueryEmbedder.open(tmp_path)


def test_missing_weights_file_raises_model_error(tmp_path: Path) -> None:
    for name in ("model.int8.onnx", "tokenizer.json"):
        shutil.copyfile(MODEL_DIR / name, tmp_path / name)
    with pytest.raises(ModelError, match="model.int8.onnx.data is missing"):
        QueryEmbedder.open(tmp_path)


def test_swapped_weights_change_the_identity_and_are_refused(tmp_path: Path) -> None:
    for name in ("model.int8.onnx", "tokenizer.json"):
        shutil.copyfile(MODEL_DIR / name, tmp_path / name)
    weights = bytearray((MODEL_DIR / "model.int8.onnx.data").read_bytes())
    weights[len(weights) // 2] ^= 1
    (tmp_path / "model.int8.onnx.data").write_bytes(bytes(weights))
    with pytest.raises(ModelError, match=f"expected {MODEL_SHA256}"):
        QueryEmbedder.open(tmp_path, expected_sha256=MODEL_SHA256)


def test_corrupt_model_raises_model_error(tmp_path: Path) -> None:
    (tmp_path / "model.int8.onnx").write_bytes(b"not an onnx model")
    (tmp_path / "model.int8.onnx.data").write_bytes(b"")
    shutil.copyfile(MODEL_DIR / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ModelError, match="cannot load"):
        QueryEmbedder.open(tmp_path)


def test_wrong_output_dim_raises_model_error(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # input_ids -> Cast -> Unsqueeze: output [batch, seq] floats, not [batch, 384].
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["sentence_embedding"], to=TensorProto.FLOAT)],
        "wrong_dim",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 8]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", 8]),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.int8.onnx"))
    (tmp_path / "model.int8.onnx.data").write_bytes(b"")
    shutil.copyfile(MODEL_DIR / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ModelError, match="expected tensor\\(float\\) \\[batch, 384\\]"):
        QueryEmbedder.open(tmp_path)


def test_bad_arguments_raise_value_or_type_error(embedder: QueryEmbedder) -> None:
    with pytest.raises(ValueError):
        QueryEmbedder.open(MODEL_DIR, expected_sha256="abc")
    with pytest.raises(ValueError):
        QueryEmbedder.open(MODEL_DIR, max_tokens=513)
    with pytest.raises(ValueError):
        QueryEmbedder.open(MODEL_DIR, n_threads=0)
    with pytest.raises(TypeError):
        embedder.embed("a single string")
    with pytest.raises(ValueError):
        embedder.embed(["x"], batch_size=0)


def test_find_model_dir_by_sha256() -> None:
    assert find_model_dir(MODEL_SHA256, search_path=[MODELS_PATH]) == MODEL_DIR
    assert find_model_dir(MODEL_SHA256, search_path=[MODEL_DIR]) == MODEL_DIR
    assert find_model_dir(search_path=[MODELS_PATH]) == MODEL_DIR


def test_find_model_dir_default_search_includes_repo_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGE_MODEL_PATH", raising=False)
    assert find_model_dir(MODEL_SHA256).resolve() == MODEL_DIR.resolve()


def test_find_model_dir_env_var_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "models" / "copy"
    copy.mkdir(parents=True)
    for name in ("model.int8.onnx", "model.int8.onnx.data", "tokenizer.json", "SHA256SUMS"):
        (copy / name).symlink_to(MODEL_DIR / name)
    monkeypatch.setenv("EDGE_MODEL_PATH", f"{tmp_path / 'elsewhere'}:{tmp_path / 'models'}")
    assert find_model_dir(MODEL_SHA256) == copy


def test_find_model_dir_skips_a_lying_sha256sums(tmp_path: Path) -> None:
    fake = tmp_path / "a-fake"
    fake.mkdir()
    (fake / "model.int8.onnx").write_bytes(b"something else")
    (fake / "model.int8.onnx.data").write_bytes(b"")
    sums = (MODEL_DIR / "SHA256SUMS").read_text(encoding="ascii")
    (fake / "SHA256SUMS").write_text(sums, encoding="ascii")
    assert find_model_dir(MODEL_SHA256, search_path=[tmp_path, MODELS_PATH]) == MODEL_DIR


def test_find_model_dir_not_found_names_hash_and_dirs(tmp_path: Path) -> None:
    wanted = "ab" * 32
    with pytest.raises(ModelError) as info:
        find_model_dir(wanted, search_path=[tmp_path, MODELS_PATH])
    message = str(info.value)
    assert wanted in message and str(tmp_path) in message and str(MODELS_PATH) in message


def test_onnxruntime_telemetry_is_off_and_writes_nothing(tmp_path: Path) -> None:
    # onnxruntime >= 1.29 wheels write a telemetry device id and event cache under $HOME and
    # upload events unless ORT_DISABLE_TELEMETRY=1 is set before it initializes.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO_PATH))
    code = ("from edge.embedder import QueryEmbedder, find_model_dir\n"
            "QueryEmbedder.open(find_model_dir()).embed(['is anything written?'])\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.rglob("*")) == []


# --------------------------------------------------------------------------- device (builder --device)

def test_a_device_whose_provider_is_missing_is_refused_before_the_model_loads() -> None:
    device = absent_onnx_device()
    with pytest.raises(ModelError, match=rf"device '{device}' needs onnxruntime's \w+ExecutionProvider.*install"):
        QueryEmbedder.open(MODEL_DIR, device=device)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_provider_that_onnxruntime_cannot_start_is_refused_not_run_on_the_cpu(monkeypatch) -> None:
    # onnxruntime, asked for a provider it cannot start, warns and runs on the CPU alone; the
    # embedder checks the session's providers instead of trusting the request.
    import onnxruntime as ort

    device = absent_onnx_device()
    from edge.embedder import EXECUTION_PROVIDERS
    listed = ort.get_available_providers() + [EXECUTION_PROVIDERS[device]]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with pytest.raises(ModelError, match=f"could not start {EXECUTION_PROVIDERS[device]}.*run on the CPU"):
        QueryEmbedder.open(MODEL_DIR, device=device)


@pytest.mark.parametrize("device, family, message", [
    ("gpu", "onnx", "device must be one of cpu, cuda, openvino, coreml"),
    ("cuda", "tflite", "runs onnx models only"),
])
def test_an_unknown_device_or_one_for_the_wrong_family_is_a_value_error(device, family, message) -> None:
    with pytest.raises(ValueError, match=message):
        QueryEmbedder.open(MODEL_DIR, device=device, family=family)


def test_the_cpu_device_is_the_default(embedder: QueryEmbedder, reference: tuple[list[str], np.ndarray]) -> None:
    on_cpu = QueryEmbedder.open(MODEL_DIR, expected_sha256=MODEL_SHA256, device="cpu")
    assert on_cpu.engine == embedder.engine and " on " not in on_cpu.engine
    sentences = reference[0][:4]
    assert np.array_equal(on_cpu.embed(sentences), embedder.embed(sentences))


def test_start_open_checks_arguments_at_once_and_raises_load_errors_at_result() -> None:
    with pytest.raises(ValueError, match="n_threads"):
        QueryEmbedder.start_open(MODEL_DIR, n_threads=0)
    pending = QueryEmbedder.start_open(MODEL_DIR, expected_sha256="ab" * 32)
    with pytest.raises(ModelError, match="expected abab"):
        pending.result()
    with pytest.raises(ModelError, match="already completed or failed"):
        pending.result()
    embedder = QueryEmbedder.start_open(MODEL_DIR, expected_sha256=MODEL_SHA256).result()
    same = QueryEmbedder.open(MODEL_DIR, expected_sha256=MODEL_SHA256)
    got, want = embedder.embed(["reset the unit"]), same.embed(["reset the unit"])
    assert got.shape == (1, 384) and float(got[0] @ want[0]) > 0.9999
    # result() loads the tokenizer while the engine still loads, but errors keep open()'s order:
    # the model's before the tokenizer's, and a bad tokenizer alone is still refused
    for opener in (QueryEmbedder.open, lambda *a, **kw: QueryEmbedder.start_open(*a, **kw).result()):
        with pytest.raises(ModelError, match="expected abab"):
            opener(MODEL_DIR, expected_sha256="ab" * 32, expected_tokenizer_sha256="cd" * 32)
        with pytest.raises(ModelError, match="tokenizer file .* expected cdcd"):
            opener(MODEL_DIR, expected_sha256=MODEL_SHA256, expected_tokenizer_sha256="cd" * 32)
