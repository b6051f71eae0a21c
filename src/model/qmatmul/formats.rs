//! Weight block layouts, as ggml stores them (llama.cpp `ggml-common.h`: `block_q4_0` …
//! `block_q6_K`; the same structs are `BlockQ4_0` … `BlockQ6K` in candle-core's
//! `quantized/k_quants.rs`). Every format is read here as sub-blocks of 32 values, the size
//! of an activation block:
//!
//! | format | bytes | values | layout                                   | value          |
//! |--------|-------|--------|------------------------------------------|----------------|
//! | Q4_0   | 18    | 32     | f16 d, u8 qs[16]                         | d·(q−8)        |
//! | Q4_1   | 20    | 32     | f16 d, f16 m, u8 qs[16]                  | d·q + m        |
//! | Q5_0   | 22    | 32     | f16 d, u32 qh, u8 qs[16]                 | d·(q−16)       |
//! | Q5_1   | 24    | 32     | f16 d, f16 m, u32 qh, u8 qs[16]          | d·q + m        |
//! | Q8_0   | 34    | 32     | f16 d, i8 qs[32]                         | d·q            |
//! | Q4_K   | 144   | 256    | f16 d, f16 dmin, u8 scales[12], qs[128]  | d·sc·q − dmin·mn |
//! | Q6_K   | 210   | 256    | u8 ql[128], u8 qh[64], i8 sc[16], f16 d  | d·sc·(q−32)    |
//!
//! In the 32-value formats value j sits in the low nibble of qs[j] and value j+16 in the high
//! one; the fifth bit of value i is bit i of qh. Q4_K's sub-block pair (2p, 2p+1) shares
//! qs[32p..32p+32] (low nibbles, then high) and has 6-bit scales and mins packed in `scales`
//! (`get_scale_min_k4`). Q6_K has a scale per 16 values; its layout is spelled out in
//! `q6k_value` below (`dequantize_row_q6_K` in ggml-quants.c).
use candle_core::quantized::GgmlDType;
use half::f16;

/// Values per activation block and per sub-block of weights.
pub const QK: usize = 32;

/// Format ids, used as const generic parameters so each kernel is compiled per format.
pub const Q4_0: u8 = 0;
pub const Q4_1: u8 = 1;
pub const Q5_0: u8 = 2;
pub const Q5_1: u8 = 3;
pub const Q8_0: u8 = 4;
pub const Q4K: u8 = 5;
pub const Q6K: u8 = 6;

/// The format id of a dtype with a kernel here.
pub fn id(dtype: GgmlDType) -> Option<u8> {
    Some(match dtype {
        GgmlDType::Q4_0 => Q4_0,
        GgmlDType::Q4_1 => Q4_1,
        GgmlDType::Q5_0 => Q5_0,
        GgmlDType::Q5_1 => Q5_1,
        GgmlDType::Q8_0 => Q8_0,
        GgmlDType::Q4K => Q4K,
        GgmlDType::Q6K => Q6K,
        _ => return None,
    })
}

/// Bytes of one weight block.
pub const fn block_bytes(f: u8) -> usize {
    match f {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        Q8_0 => 34,
        Q4K => 144,
        _ => 210,
    }
}

/// Sub-blocks of 32 values in one weight block.
pub const fn subs(f: u8) -> usize {
    match f {
        Q4K | Q6K => 8,
        _ => 1,
    }
}

pub fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q4_K's 6-bit scale and min of sub-block `j` (ggml-quants.c `get_scale_min_k4`).
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q6_K's 6-bit value `i` (0..256) of a block, before the −32 offset.
fn q6k_value(blk: &[u8], i: usize) -> u8 {
    let (half, l) = (i / 128, i % 128);
    let ql = &blk[64 * half..];
    let qh = &blk[128 + 32 * half..];
    let (lo, shift) = match l / 32 {
        0 => (ql[l] & 0xF, 0),
        1 => (ql[l] & 0xF, 2),
        2 => (ql[l - 64] >> 4, 4),
        _ => (ql[l - 64] >> 4, 6),
    };
    lo | (((qh[l % 32] >> shift) & 3) << 4)
}

/// Sub-block `j` of a weight block, decoded for the reference: value_i = scale[i / 16]·q_i + min.
pub struct Decoded {
    pub q: [i32; QK],
    pub scale: [f32; 2],
    pub min: f32,
}

/// The reference decoding, written straight from the layouts above.
pub fn decode(f: u8, blk: &[u8], j: usize) -> Decoded {
    let mut q = [0i32; QK];
    let nibble = |qs: &[u8], i: usize| {
        if i < 16 {
            qs[i] & 0xF
        } else {
            qs[i - 16] >> 4
        }
    };
    let high_bit = |i: usize, at: usize| {
        let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
        (((qh >> i) & 1) << 4) as u8
    };
    let (scale, min) = match f {
        Q4_0 | Q4_1 => {
            let (qs, z) = if f == Q4_0 {
                (&blk[2..], 8)
            } else {
                (&blk[4..], 0)
            };
            for (i, v) in q.iter_mut().enumerate() {
                *v = nibble(qs, i) as i32 - z;
            }
            let min = if f == Q4_1 { f16_at(blk, 2) } else { 0.0 };
            ([f16_at(blk, 0); 2], min)
        }
        Q5_0 | Q5_1 => {
            let (qh, z) = if f == Q5_0 { (2, 16) } else { (4, 0) };
            let qs = &blk[qh + 4..];
            for (i, v) in q.iter_mut().enumerate() {
                *v = (nibble(qs, i) | high_bit(i, qh)) as i32 - z;
            }
            let min = if f == Q5_1 { f16_at(blk, 2) } else { 0.0 };
            ([f16_at(blk, 0); 2], min)
        }
        Q8_0 => {
            for (v, &b) in q.iter_mut().zip(&blk[2..34]) {
                *v = b as i8 as i32;
            }
            ([f16_at(blk, 0); 2], 0.0)
        }
        Q4K => {
            let qs = &blk[16 + 32 * (j / 2)..];
            let shift = 4 * (j % 2);
            for (i, v) in q.iter_mut().enumerate() {
                *v = ((qs[i] >> shift) & 0xF) as i32;
            }
            let (sc, mn) = scale_min_k4(j, &blk[4..16]);
            ([f16_at(blk, 0) * sc as f32; 2], -f16_at(blk, 2) * mn as f32)
        }
        _ => {
            for (i, v) in q.iter_mut().enumerate() {
                *v = q6k_value(blk, QK * j + i) as i32 - 32;
            }
            let d = f16_at(blk, 208);
            let sc = |h: usize| blk[192 + 2 * j + h] as i8 as f32;
            ([d * sc(0), d * sc(1)], 0.0)
        }
    };
    Decoded { q, scale, min }
}
