"""Run the mutation families of tests/vectors (``mutate:``): every derived input, one expected outcome.

For each input: ``open_capsule`` with the vector's device state; if it opens, every chunk is
read (each read must fail with a capsule error or return the genuine text) and
``verify_capsule(full=True)`` must give the family's ``expect`` word. If it does not open, the
open's error is the outcome.
"""

from __future__ import annotations

from pathlib import Path

from edge.capsule import OpenOptions, open_capsule, verify_capsule
from edge.errors import CapsuleError

from ..vectors.harness import VECTORS, Expect, device_state, identities, mutations, outcome, resign, trusted_keys


def genuine_texts() -> list[str]:
    """Return every chunk's text of the ``ok`` vector, read through the runtime."""
    expect = Expect.read(VECTORS / "ok" / "EXPECT")
    with open_capsule(VECTORS / "ok" / "capsule", trusted_keys=trusted_keys(expect), identities=identities(expect),
                      now=expect.now) as capsule:
        return [capsule.read(i, now=expect.now).text for i in range(capsule.manifest.n_chunks)]


def run_family(name: str, tmp: Path, genuine: list[str]) -> int:
    """Check every input of family ``name``; return how many inputs ran."""
    vector = VECTORS / name
    expect = Expect.read(vector / "EXPECT")
    words, open_words = expect.words(), expect.open_words()
    read_words = set((expect.get("read") or "genuine").split("|"))
    kwargs = dict(trusted_keys=trusted_keys(expect), identities=identities(expect), now=expect.now)
    inputs = mutations(vector)
    assert inputs
    path = tmp / "mutated.capsule"
    for label, data, needs_resign in inputs:
        path.write_bytes(resign(data) if needs_resign else data)
        holder: list = []
        opened = outcome(lambda: holder.append(open_capsule(path, options=OpenOptions(device=device_state(vector, expect)), **kwargs)))
        assert opened in open_words, (name, label, opened)
        if not holder:
            assert opened in words, (name, label, opened)
            continue
        capsule = holder[0]
        try:
            for chunk_id in range(capsule.manifest.n_chunks):
                try:
                    text = capsule.read(chunk_id, now=expect.now).text
                except CapsuleError as exc:
                    assert exc.expect in read_words, (name, label, chunk_id, exc)
                else:
                    assert "genuine" in read_words and text == genuine[chunk_id], (name, label, chunk_id)
        finally:
            capsule.close()
        final = outcome(lambda: verify_capsule(path, full=True, trusted_keys=kwargs["trusted_keys"], now=expect.now,
                                               options=OpenOptions(device=device_state(vector, expect))))
        assert final in words, (name, label, final)
    return len(inputs)
