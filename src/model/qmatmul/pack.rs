//! The weight layout of the AMX kernel: 16 rows side by side, so that unpacking one block of
//! them gives the weight tile `tdpbsud` takes, with no transposing at run time.
//!
//! An AMX multiply (Intel SDM vol. 1 ch. 18, `TDPBSUD`) takes its second operand B in "VNNI"
//! order: tile row g holds, for each of 16 columns (here: weight rows), the 4 values
//! 4g … 4g+3 of that column. For 32 values that is 8 tile rows of 64 bytes; tile byte t
//! holds value 4·(t / 64) + t % 4 of weight row (t % 64) / 4.
//!
//! A unit is one block of 16 rows (a sub-block of 32 values for the 32-value formats, a
//! super-block of 256 for the K-quants), as much data as the 16 GGUF blocks it comes from:
//!
//! | format | unit                                                            |
//! |--------|-----------------------------------------------------------------|
//! | Q4_0   | f16 d[16], q[256]                                               |
//! | Q4_1   | f16 d[16], f16 m[16], q[256]                                    |
//! | Q5_0   | f16 d[16], qh[64], q[256]                                       |
//! | Q5_1   | f16 d[16], f16 m[16], qh[64], q[256]                            |
//! | Q8_0   | f16 d[16], i8 q[512] (the tile itself)                          |
//! | Q4_K   | f16 d[16], f16 dmin[16], u8 sc[8][16], u8 mn[8][16], q[8][256]  |
//! | Q6_K   | f16 d[16], i8 sc[16][16], q[8][256], qh[8][128]                 |
//!
//! 4-bit quants: byte i of q holds tile byte i in its low nibble and tile byte 256 + i in its
//! high one, so values 0–15 of every row come from the low nibbles (which Q6_K's first scale
//! covers) and values 16–31 from the high ones. Q5's fifth bits: bit t of qh (little-endian)
//! is tile byte t's. Q6_K's top two bits: bits 2s, 2s+1 of qh byte i belong to tile byte
//! i + 128·s. Q4_K's scales and mins are stored unpacked (64 bytes a unit more than GGUF's).
//! Quants are stored unsigned, as in GGUF; the zero points stay with the kernel.
use super::formats::{
    block_bytes, decode, scale_min_k4, subs, Q4K, Q4_0, Q4_1, Q5_0, Q5_1, Q6K, Q8_0, QK,
};
use super::pages::Block;
use rayon::prelude::*;

/// Weight rows per unit: the columns of a tile.
pub const GROUP: usize = 16;

/// Bytes of one unit.
pub const fn unit_bytes(f: u8) -> usize {
    GROUP * block_bytes(f) + if f == Q4K { 64 } else { 0 }
}

/// Where the parts of a unit start.
pub const D: usize = 0;
/// Q4_1/Q5_1's m, Q4_K's dmin.
pub const M: usize = 32;
/// Q5's fifth bits.
pub const fn qh(f: u8) -> usize {
    if f == Q5_1 {
        64
    } else {
        32
    }
}
/// The quants of sub-block 0 (Q6_K: their low four bits).
pub const fn q(f: u8) -> usize {
    match f {
        Q4_0 | Q8_0 => 32,
        Q4_1 => 64,
        Q5_0 => 96,
        Q5_1 => 128,
        Q4K => 320,
        _ => 288,
    }
}
/// Q4_K's scales and mins, [sub-block][row]; Q6_K's scales, [16-value half][row].
pub const SC: usize = 64;
pub const MN: usize = 192;
pub const SC6: usize = 32;
/// Q6_K's top bits of sub-block 0.
pub const QH6: usize = 288 + 8 * 256;

/// Weights in the packed layout: `n` rows of `k` values, rows padded to a multiple of 16
/// with zeros (which add nothing and are never written out).
pub struct Packed {
    pub f: u8,
    pub n: usize,
    pub k: usize,
    data: Block,
}

impl Packed {
    /// Units along a row.
    pub fn units(&self) -> usize {
        self.k / (subs(self.f) * QK)
    }

    /// The first unit of group `g` (rows 16g … 16g + 15).
    pub fn group(&self, g: usize) -> *const u8 {
        self.data[g * self.units() * unit_bytes(self.f)..].as_ptr() as *const u8
    }

    /// Packs `n` rows of GGUF blocks of format `f`, `k` values each (shapes checked by the
    /// caller).
    pub fn new(f: u8, w: &[u8], n: usize, k: usize) -> Packed {
        let units = k / (subs(f) * QK);
        let group_bytes = units * unit_bytes(f);
        let mut data = Block::zeroed(n.div_ceil(GROUP) * group_bytes);
        data.par_chunks_mut(group_bytes)
            .enumerate()
            .for_each(|(g, dst)| {
                for row in 0..GROUP.min(n - g * GROUP) {
                    let src = &w[(g * GROUP + row) * units * block_bytes(f)..];
                    for (u, unit) in dst.chunks_exact_mut(unit_bytes(f)).enumerate() {
                        let blk = &src[u * block_bytes(f)..(u + 1) * block_bytes(f)];
                        put(f, blk, row, unit);
                    }
                }
            });
        Packed { f, n, k, data }
    }
}

/// Writes one GGUF block `blk` as row `row` of a unit.
fn put(f: u8, blk: &[u8], row: usize, unit: &mut [i8]) {
    let unit: &mut [u8] = bytemuck_u8(unit);
    let copy16 = |unit: &mut [u8], at: usize, from: usize| {
        unit[at + 2 * row..at + 2 * row + 2].copy_from_slice(&blk[from..from + 2]);
    };
    match f {
        Q4K => {
            copy16(unit, D, 0);
            copy16(unit, M, 2);
            for j in 0..8 {
                let (sc, mn) = scale_min_k4(j, &blk[4..16]);
                unit[SC + 16 * j + row] = sc;
                unit[MN + 16 * j + row] = mn;
            }
        }
        Q6K => {
            copy16(unit, D, 208);
            for h in 0..16 {
                unit[SC6 + 16 * h + row] = blk[192 + h];
            }
        }
        _ => {
            copy16(unit, D, 0);
            if f == Q4_1 || f == Q5_1 {
                copy16(unit, M, 2);
            }
        }
    }
    // The stored (unsigned) quants: `decode` subtracts the zero points, so add them back.
    let zero = match f {
        Q4_0 => 8,
        Q5_0 => 16,
        Q6K => 32,
        _ => 0,
    };
    for j in 0..subs(f) {
        let values = decode(f, blk, j).q;
        let q = q(f) + 256 * j;
        for (v, &value) in values.iter().enumerate() {
            let raw = (value + zero) as u8;
            let t = v / 4 * 64 + row * 4 + v % 4;
            if f == Q8_0 {
                unit[q + t] = raw;
                continue;
            }
            unit[q + t % 256] |= (raw & 0xF) << (4 * (t / 256));
            match f {
                Q5_0 | Q5_1 => unit[qh(f) + t / 8] |= ((raw >> 4) & 1) << (t % 8),
                Q6K => unit[QH6 + 128 * j + t % 128] |= ((raw >> 4) & 3) << (2 * (t / 128)),
                _ => {}
            }
        }
    }
}

/// The same bytes, unsigned.
fn bytemuck_u8(b: &mut [i8]) -> &mut [u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast(), b.len()) }
}
