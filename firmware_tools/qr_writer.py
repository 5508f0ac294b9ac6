"""QR symbols for frames: byte-mode QR codes drawn as module matrices, two writers that agree.

``zxing_modules`` draws with zxing-cpp's writer (zint); ``NumpyQrWriter`` draws the same symbols
about 8x faster with NumPy for one fixed version / EC level / mask, and checks itself against
zxing-cpp on first use. ``firmware_tools.qr_video`` turns the matrices into frames and an MP4.

Source: ISO/IEC 18004:2015 §7 (byte mode, Reed-Solomon, placement, masking).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .errors import VideoEncodeError

__all__ = ["DATA_CODEWORDS", "N_BLOCKS", "zxing_modules", "NumpyQrWriter", "numpy_writer"]

# Data codewords per QR version 1..40 and EC level (ISO/IEC 18004:2015 Table 7).
DATA_CODEWORDS: dict[str, tuple[int, ...]] = {
    "L": (19, 34, 55, 80, 108, 136, 156, 194, 232, 274, 324, 370, 428, 461, 523, 589, 647, 721, 795, 861,
          932, 1006, 1094, 1174, 1276, 1370, 1468, 1531, 1631, 1735, 1843, 1955, 2071, 2191, 2306, 2434,
          2566, 2702, 2812, 2956),
    "M": (16, 28, 44, 64, 86, 108, 124, 154, 182, 216, 254, 290, 334, 365, 415, 453, 507, 563, 627, 669,
          714, 782, 860, 914, 1000, 1062, 1128, 1193, 1267, 1373, 1455, 1541, 1631, 1725, 1812, 1914,
          1992, 2102, 2216, 2334),
    "Q": (13, 22, 34, 48, 62, 76, 88, 110, 132, 154, 180, 206, 244, 261, 295, 325, 367, 397, 445, 485,
          512, 568, 614, 664, 718, 754, 808, 871, 911, 985, 1033, 1115, 1171, 1231, 1286, 1354, 1426,
          1502, 1582, 1666),
    "H": (9, 16, 26, 36, 46, 60, 66, 86, 100, 122, 140, 158, 180, 197, 223, 253, 283, 313, 341, 385, 406,
          442, 464, 514, 538, 596, 628, 661, 701, 745, 793, 845, 901, 961, 986, 1054, 1096, 1142, 1222,
          1276),
}

# Error-correction blocks per QR version 1..40 and EC level (ISO/IEC 18004:2015 Table 9).
N_BLOCKS: dict[str, tuple[int, ...]] = {
    "L": (1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 4, 6, 6, 6, 6, 7, 8, 8, 9, 9, 10, 12, 12, 12, 13, 14, 15, 16,
          17, 18, 19, 19, 20, 21, 22, 24, 25),
    "M": (1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16, 17, 17, 18, 20, 21, 23, 25, 26, 28,
          29, 31, 33, 35, 37, 38, 40, 43, 45, 47, 49),
    "Q": (1, 1, 2, 2, 4, 4, 6, 6, 8, 8, 8, 10, 12, 16, 12, 17, 16, 18, 21, 20, 23, 23, 25, 27, 29, 34, 34, 35,
          38, 40, 43, 45, 48, 51, 53, 56, 59, 62, 65, 68),
    "H": (1, 1, 2, 4, 4, 4, 5, 6, 8, 8, 11, 11, 16, 16, 18, 16, 19, 21, 25, 25, 25, 34, 30, 32, 35, 37, 40, 42,
          45, 48, 51, 54, 57, 60, 63, 66, 70, 74, 77, 81),
}


def zxing_modules(payload: bytes, version: int, ec_level: str, mask: int | None) -> np.ndarray:
    """Draw one symbol with zxing-cpp's writer (zint): uint8 [n, n], 0 = dark, 255 = light."""
    import zxingcpp

    kwargs: dict[str, Any] = {"ec_level": ec_level, "version": version,
                              "eci": "0"}  # "0": no ECI header (zint would add ECI 899 for bytes)
    if mask is not None:
        kwargs["data_mask"] = mask
    barcode = zxingcpp.create_barcode(bytes(payload), zxingcpp.BarcodeFormat.QRCode, **kwargs)
    return np.asarray(barcode.to_image(scale=1, add_quiet_zones=False), dtype=np.uint8)


# GF(256) over the QR polynomial x^8 + x^4 + x^3 + x^2 + 1 (ISO/IEC 18004:2015 §7.5.2).
_GF_EXP = np.zeros(512, dtype=np.int64)
_GF_LOG = np.zeros(256, dtype=np.int64)
_v = 1
for _i in range(255):
    _GF_EXP[_i] = _v
    _GF_LOG[_v] = _i
    _v <<= 1
    if _v & 0x100:
        _v ^= 0x11D
_GF_EXP[255:510] = _GF_EXP[:255]
del _i, _v


def _gf_mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else int(_GF_EXP[_GF_LOG[a] + _GF_LOG[b]])


def _alignment_centres(version: int) -> list[int]:
    if version == 1:
        return []
    size = 17 + 4 * version
    n_align = version // 7 + 2
    step = 26 if version == 32 else (version * 4 + n_align * 2 + 1) // (n_align * 2 - 2) * 2
    return [6] + [size - 7 - i * step for i in range(n_align - 1)][::-1]


class NumpyQrWriter:
    """Byte-mode QR symbols of one version / EC level / mask, drawn with NumPy (~0.4 ms for v40).

    zxing-cpp's writer (zint) takes ~3.2 ms per v40 symbol (2.6 ms encode + 0.6 ms to_image),
    which alone would cap a 2-core build below its target. This writer precomputes, once per
    (version, EC level, mask): the data-module placement order (§7.7.3), the mask bits (§7.8.2),
    the block interleaving (§7.6) and, for Reed-Solomon (§7.5.2), one table of every
    (position, byte value) -> EC contribution, so that the EC codewords of all blocks are one gather
    and one XOR-reduce. The function patterns, format and version information are copied from a
    zxing-cpp-drawn symbol with the same version/EC/mask, and the first use checks that this writer
    and zxing-cpp's draw identical modules for sample payloads (VideoEncodeError if not).

    Source: ISO/IEC 18004:2015 §7 (byte mode, §7.4.5; no ECI; terminator and 0xEC/0x11 padding).
    """

    def __init__(self, version: int, ec_level: str, mask: int) -> None:
        n = 17 + 4 * version
        function = np.zeros((n, n), dtype=bool)
        function[:9, :9] = True          # finder + separator + format information (3 corners)
        function[:9, n - 8:] = True
        function[n - 8:, :9] = True      # includes the dark module at (4v + 9, 8)
        function[6, :] = True            # timing patterns
        function[:, 6] = True
        centres = _alignment_centres(version)
        for r in centres:
            for c in centres:
                if (r, c) not in ((6, 6), (6, centres[-1]), (centres[-1], 6)):
                    function[r - 2:r + 3, c - 2:c + 3] = True
        if version >= 7:                 # version information
            function[:6, n - 11:n - 8] = True
            function[n - 11:n - 8, :6] = True
        rows: list[int] = []
        cols: list[int] = []
        upward, col = True, n - 1
        while col > 0:                   # two-module columns, zig-zag from the bottom right
            if col == 6:
                col -= 1
            for r in (range(n - 1, -1, -1) if upward else range(n)):
                for c in (col, col - 1):
                    if not function[r, c]:
                        rows.append(r)
                        cols.append(c)
            upward = not upward
            col -= 2
        r_arr, c_arr = np.asarray(rows), np.asarray(cols)
        total_cw = len(rows) // 8
        n_data = DATA_CODEWORDS[ec_level][version - 1]
        n_blocks = N_BLOCKS[ec_level][version - 1]
        n_ec = (total_cw - n_data) // n_blocks
        if (total_cw - n_data) % n_blocks:
            raise VideoEncodeError(f"qr block table inconsistent for version {version}-{ec_level}")
        short = n_data // n_blocks
        lengths = [short] * (n_blocks - n_data % n_blocks) + [short + 1] * (n_data % n_blocks)
        kmax = max(lengths)
        starts = np.cumsum([0] + lengths[:-1])
        # data blocks, left-padded with a zero codeword (index n_data) to kmax: same polynomial
        gather = np.full((n_blocks, kmax), n_data, dtype=np.int64)
        for j, k in enumerate(lengths):
            gather[j, kmax - k:] = starts[j] + np.arange(k)
        order = [int(starts[j]) + i for i in range(kmax) for j in range(n_blocks) if i < lengths[j]]
        order += [n_data + j * n_ec + i for i in range(n_ec) for j in range(n_blocks)]
        # generator polynomial (monic, highest power first) and x^(n_ec + p) mod g for each p
        gen = [1]
        for i in range(n_ec):
            root = int(_GF_EXP[i])
            nxt = gen + [0]
            for k, coef in enumerate(gen):
                nxt[k + 1] ^= _gf_mul(coef, root)
            gen = nxt
        remainders = []
        cur = gen[1:]
        for _ in range(kmax):
            remainders.append(cur)
            lead, cur = cur[0], cur[1:] + [0]
            if lead:
                cur = [a ^ _gf_mul(lead, g) for a, g in zip(cur, gen[1:])]
        rem = np.array(remainders[::-1], dtype=np.int64)  # row i multiplies padded column i
        width = -(-n_ec // 8) * 8
        values = np.arange(256)
        log_v = np.where(values > 0, _GF_LOG[values], 0)
        table = np.zeros((kmax, 256, width), dtype=np.uint8)
        for i in range(kmax):
            for j in range(n_ec):
                if rem[i, j]:
                    prod = _GF_EXP[log_v + _GF_LOG[rem[i, j]]]
                    table[i, :, j] = np.where(values > 0, prod, 0)
        self._ec_table = table.view(np.uint64).reshape(kmax, 256, width // 8)
        self._gather = gather
        self._interleave = np.asarray(order, dtype=np.int64)
        self._columns = np.arange(kmax)[None, :]
        self._n_data, self._n_ec, self._kmax = n_data, n_ec, kmax
        self._count_bits = 8 if version < 10 else 16
        self.capacity_bytes = (n_data * 8 - 4 - self._count_bits) // 8
        i, j = r_arr, c_arr
        mask_bits = (
            (i + j) % 2 == 0, i % 2 == 0, j % 3 == 0, (i + j) % 3 == 0, (i // 2 + j // 3) % 2 == 0,
            (i * j) % 2 + (i * j) % 3 == 0, ((i * j) % 2 + (i * j) % 3) % 2 == 0,
            ((i + j) % 2 + (i * j) % 3) % 2 == 0,
        )[mask]
        self._mask_bits = mask_bits.astype(np.uint8)
        self._n_data_modules = len(rows)
        self._flat_pos = r_arr * n + c_arr
        self._template = zxing_modules(b"\xa5", version, ec_level, mask)
        if self._template.shape != (n, n):
            raise VideoEncodeError(f"zxing-cpp drew {self._template.shape} modules for version {version}")
        self._self_check(version, ec_level, mask)

    def _data_codewords(self, payload: bytes) -> np.ndarray:
        n = len(payload)
        header_bits = 4 + self._count_bits
        bits = np.zeros(self._n_data * 8, dtype=np.uint8)
        header = (0b0100 << self._count_bits) | n  # byte mode indicator + character count
        bits[:header_bits] = (header >> np.arange(header_bits - 1, -1, -1)) & 1
        bits[header_bits:header_bits + 8 * n] = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
        codewords = np.packbits(bits)  # zero terminator and zero bit padding come for free
        used = min((header_bits + 8 * n + 4 + 7) // 8, self._n_data)
        codewords[used:] = np.resize(np.array([0xEC, 0x11], dtype=np.uint8), self._n_data - used)
        return codewords

    def modules(self, payload: bytes) -> np.ndarray:
        """Return the symbol for ``payload``: uint8 [n, n], 0 = dark, 255 = light."""
        data = self._data_codewords(bytes(payload))
        padded = np.append(data, np.uint8(0))[self._gather]             # (blocks, kmax)
        ec = np.bitwise_xor.reduce(self._ec_table[self._columns, padded], axis=1)
        ec = ec.view(np.uint8)[:, :self._n_ec]
        stream = np.concatenate([data, ec.reshape(-1)])[self._interleave]
        bits = np.zeros(self._n_data_modules, dtype=np.uint8)          # + remainder bits (0)
        bits[:stream.size * 8] = np.unpackbits(stream)
        out = self._template.copy()
        out.reshape(-1)[self._flat_pos] = (1 - (bits ^ self._mask_bits)) * 255
        return out

    def _self_check(self, version: int, ec_level: str, mask: int) -> None:
        rng = np.random.default_rng(version * 31 + mask)
        for size in (self.capacity_bytes, max(1, self.capacity_bytes // 3)):
            # bytes 0xA0..0xDF: zint keeps them in byte mode (no numeric/alphanumeric/kanji runs)
            sample = rng.integers(0xA0, 0xE0, size, dtype=np.uint8).tobytes()
            if not np.array_equal(self.modules(sample), zxing_modules(sample, version, ec_level, mask)):
                raise VideoEncodeError(f"numpy qr writer disagrees with zxing-cpp for version {version}-{ec_level} "
                                   f"mask {mask}")


@functools.lru_cache(maxsize=8)
def numpy_writer(version: int, ec_level: str, mask: int) -> NumpyQrWriter:
    return NumpyQrWriter(version, ec_level, mask)
