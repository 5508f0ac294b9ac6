"""The container writer against the runtime's container reader: every layout round-trips."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import format as fmt
from edge.container import ContainerFile
from firmware_tools.container_writer import container_bytes, write_container
from firmware_tools.errors import BuildError

_SECTIONS = st.fixed_dictionaries({tag: st.binary(min_size=fmt.SECTION_LIMITS[tag][0], max_size=5000)
                                   for tag in fmt.SECTION_ORDER})


@settings(max_examples=60, deadline=None)
@given(sections=_SECTIONS, block=st.integers(1, 4096))
def test_written_containers_read_back_section_for_section(tmp_path_factory, sections, block):
    path = tmp_path_factory.mktemp("container") / "c.capsule"
    blocked = {tag: (len(data), [data[i:i + block] for i in range(0, len(data), block)])
               for tag, data in sections.items()}
    with open(path, "wb") as out:
        n_bytes = write_container(out, blocked)
    assert path.read_bytes() == container_bytes(sections) and path.stat().st_size == n_bytes
    with ContainerFile(path) as cf:  # header, table, alignment and zero padding are the reader's
        assert {tag: b"".join(cf.iter_blocks(tag)) for tag in fmt.SECTION_ORDER} == sections


def test_blocks_that_do_not_add_up_to_the_declared_length_are_a_build_error():
    sections = {tag: (32, [b"a" * 32]) for tag in fmt.SECTION_ORDER}
    sections["VIDE"] = (64, [b"a" * 32])
    with pytest.raises(BuildError, match="section VIDE gave 32 bytes, its length is 64"):
        write_container(io.BytesIO(), sections)


def test_a_length_outside_the_format_limits_is_refused_before_writing():
    sections = {tag: (32, [b"a" * 32]) for tag in fmt.SECTION_ORDER}
    sections["SIGS"] = (0, [])
    out = io.BytesIO()
    with pytest.raises(BuildError, match=r"section SIGS is 0 bytes, the format allows 1\.\.65536"):
        write_container(out, sections)
    assert out.tell() == 0
