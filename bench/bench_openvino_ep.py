"""Study: onnxruntime's OpenVINO execution provider against its CPU provider, on this machine.

Issue 15 asks for an accelerator option (``--device``: CUDA, OpenVINO, CoreML). No GPU is lent
here, but OpenVINO also runs on x86 CPUs, so this measures whether it would pay on a CPU-only
desktop. The shipped int8 model embeds the first 300 SciFact abstracts (up to 256 tokens, batch
1), with each provider at 1 and 2 threads. The script prints chunks/s and the smallest cosine to the
CPU provider's vectors.

``onnxruntime-openvino`` replaces the ``onnxruntime`` module, so run this in a venv of its own::

    python3 -m venv /tmp/ovenv
    /tmp/ovenv/bin/pip install onnxruntime-openvino==1.24.1 openvino numpy tokenizers
    /tmp/ovenv/bin/python bench/bench_openvino_ep.py > bench/results/openvino-ep.json

Not a test; nothing is asserted.
"""
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "all-MiniLM-L6-v2"
tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
tok.enable_truncation(256)
texts = [json.loads(l)['text'] for l in open(ROOT.parent / 'shared' / 'data' / 'scifact' / 'corpus.jsonl')][:300]
ids = [tok.encode(t).ids for t in texts]
def session(provider, threads):
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.log_severity_level = 3
    return ort.InferenceSession(str(MODEL_DIR / 'model.int8.onnx'), o, providers=[provider])
def run(s, rows):
    out = []
    for r in rows:
        a = np.array([r], np.int64)
        out.append(s.run(None, {'input_ids': a, 'attention_mask': np.ones_like(a)})[0][0])
    return np.array(out)
res = {}
for prov in ('CPUExecutionProvider', 'OpenVINOExecutionProvider'):
    for th in (1, 2):
        try:
            s = session(prov, th)
        except Exception as e:
            res[f'{prov}/{th}'] = f'fails: {str(e)[:120]}'; continue
        run(s, ids[:10])
        t = time.perf_counter(); v = run(s, ids); dt = time.perf_counter() - t
        res[f'{prov}/{th}'] = {'chunks_per_s': round(len(ids) / dt, 1), 'providers': s.get_providers()}
        res.setdefault('_vecs', {})[f'{prov}/{th}'] = v
base = res['_vecs']['CPUExecutionProvider/1']; base = base / np.linalg.norm(base, axis=1, keepdims=True)
for k, v in res.pop('_vecs').items():
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    res[k]['min_cos_to_cpu1'] = round(float((v * base).sum(1).min()), 5)
print(json.dumps({'onnxruntime': ort.__version__, 'cpu': open('/proc/cpuinfo').read().split('model name')[1].split('\n')[0], **res}, indent=1))
