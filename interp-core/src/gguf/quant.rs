//! ggml's tensor types and their dequantisers, block by block as ggml lays them out
//! (`ggml-common.h`; checked value for value against the `gguf` Python package's
//! `gguf.quants.dequantize` by `tests/suite/loading.rs`).

use half::{bf16, f16};

/// A ggml tensor type, by its number in the GGUF file (named as ggml names them).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 32 weights: an f16 scale, 4-bit values minus 8.
    Q4_0,
    /// 32 weights: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// 32 weights: an f16 scale, 5-bit values minus 16.
    Q5_0,
    /// 32 weights: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// 32 weights: an f16 scale, 8-bit signed values.
    Q8_0,
    /// 256 weights: 16 sub-blocks with 4-bit scales and minimums, 2-bit values.
    Q2_K,
    /// 256 weights: 16 sub-blocks with 6-bit scales, 3-bit values.
    Q3_K,
    /// 256 weights: 8 sub-blocks with 6-bit scales and minimums, 4-bit values.
    Q4_K,
    /// 256 weights: 8 sub-blocks with 6-bit scales and minimums, 5-bit values.
    Q5_K,
    /// 256 weights: 16 sub-blocks with 8-bit scales, 6-bit values.
    Q6_K,
}

/// ggml's names for the type numbers this reader does not dequantise, so a refusal can name them.
const OTHER_TYPES: &[(u32, &str)] = &[
    (9, "Q8_1"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
    (40, "NVFP4"),
    (41, "Q1_0"),
];

impl GgmlType {
    /// The type numbered `n`, or the name (or number) of a type that is not supported.
    pub fn from_u32(n: u32) -> Result<Self, String> {
        use GgmlType::*;
        Ok(match n {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            30 => BF16,
            _ => return Err(OTHER_TYPES.iter().find(|(k, _)| *k == n).map_or_else(|| format!("unknown type {n}"), |(_, s)| s.to_string())),
        })
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
        }
    }

    /// (weights per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        const K: usize = 256;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 2 + 16),
            Q4_1 => (32, 2 + 2 + 16),
            Q5_0 => (32, 2 + 4 + 16),
            Q5_1 => (32, 2 + 2 + 4 + 16),
            Q8_0 => (32, 2 + 32),
            Q2_K => (K, 2 + 2 + K / 16 + K / 4),
            Q3_K => (K, 2 + K / 4 + K / 8 + 12),
            Q4_K => (K, 2 + 2 + K / 2 + 12),
            Q5_K => (K, 2 + 2 + K / 2 + K / 8 + 12),
            Q6_K => (K, 2 + K / 2 + K / 4 + K / 16),
        }
    }

    /// Bytes that `n` weights take, or `None` where `n` is not a whole number of blocks (or the
    /// size overflows).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (per, bytes) = self.block();
        (n % per as u64 == 0).then(|| (n / per as u64).checked_mul(bytes as u64)).flatten()
    }

    /// Writes the weights that `data` (whole blocks) holds into `out` (as many as the blocks
    /// hold).
    pub(crate) fn dequantize(self, data: &[u8], out: &mut [f32]) {
        let (per, bytes) = self.block();
        debug_assert_eq!(data.len() / bytes * per, out.len());
        let blocks = data.chunks_exact(bytes).zip(out.chunks_exact_mut(per));
        match self {
            GgmlType::F32 => blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => blocks.for_each(|(b, o)| o[0] = half16(b, 0)),
            GgmlType::BF16 => blocks.for_each(|(b, o)| o[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
            GgmlType::Q4_0 => blocks.for_each(|(b, o)| q4(b, 2, half16(b, 0), 8.0, 0.0, o)),
            GgmlType::Q4_1 => blocks.for_each(|(b, o)| q4(b, 4, half16(b, 0), 0.0, half16(b, 2), o)),
            GgmlType::Q5_0 => blocks.for_each(|(b, o)| q5(b, 2, half16(b, 0), 16.0, 0.0, o)),
            GgmlType::Q5_1 => blocks.for_each(|(b, o)| q5(b, 4, half16(b, 0), 0.0, half16(b, 2), o)),
            GgmlType::Q8_0 => blocks.for_each(|(b, o)| {
                let d = half16(b, 0);
                for (o, &q) in o.iter_mut().zip(&b[2..]) {
                    *o = d * f32::from(q as i8);
                }
            }),
            GgmlType::Q2_K => blocks.for_each(|(b, o)| q2_k(b, o)),
            GgmlType::Q3_K => blocks.for_each(|(b, o)| q3_k(b, o)),
            GgmlType::Q4_K => blocks.for_each(|(b, o)| q45_k(b, None, o)),
            GgmlType::Q5_K => blocks.for_each(|(b, o)| q45_k(b, Some(&b[16..48]), o)),
            GgmlType::Q6_K => blocks.for_each(|(b, o)| q6_k(b, o)),
        }
    }
}

/// The f16 at byte `at`.
fn half16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q4_0 / Q4_1: 16 bytes from `qs`; the low nibbles are weights 0..16, the high ones 16..32;
/// weight = d * (q - offset) + m (Q4_0: offset 8, no minimum; Q4_1: a minimum), rounded as ggml
/// rounds it.
fn q4(b: &[u8], qs: usize, d: f32, offset: f32, m: f32, o: &mut [f32]) {
    for (j, &q) in b[qs..qs + 16].iter().enumerate() {
        o[j] = d * (f32::from(q & 0x0F) - offset) + m;
        o[j + 16] = d * (f32::from(q >> 4) - offset) + m;
    }
}

/// Q5_0 / Q5_1: a u32 of fifth bits, then the nibbles as in Q4.
fn q5(b: &[u8], qh: usize, d: f32, offset: f32, m: f32, o: &mut [f32]) {
    let high = u32::from_le_bytes([b[qh], b[qh + 1], b[qh + 2], b[qh + 3]]);
    for (j, &q) in b[qh + 4..qh + 20].iter().enumerate() {
        let lo = (q & 0x0F) | ((((high >> j) & 1) as u8) << 4);
        let hi = (q >> 4) | ((((high >> (j + 16)) & 1) as u8) << 4);
        o[j] = d * (f32::from(lo) - offset) + m;
        o[j + 16] = d * (f32::from(hi) - offset) + m;
    }
}

/// Q2_K: scales[16] (low nibble scale, high nibble minimum), qs[64], d, dmin. Each half of qs
/// (32 bytes) holds 128 weights as four 2-bit planes.
fn q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half16(b, 80), half16(b, 82));
    for (i, o) in o.iter_mut().enumerate() {
        let (half, plane, j) = (i / 128, (i % 128) / 32, i % 32);
        let q = (qs[half * 32 + j] >> (2 * plane)) & 3;
        let sc = scales[i / 16];
        *o = d * f32::from(sc & 0x0F) * f32::from(q) - dmin * f32::from(sc >> 4);
    }
}

/// Q3_K: hmask[32], qs[64], scales[12] (sixteen 6-bit scales, offset 32), d. A weight is its two
/// low bits from qs minus 4 where its hmask bit is clear.
fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = half16(b, 108);
    let mut scales = [0f32; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let low = (sc[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        *s = f32::from(((low | (high << 4)) as i8) - 32);
    }
    for (i, o) in o.iter_mut().enumerate() {
        let (half, plane, j) = (i / 128, (i % 128) / 32, i % 32);
        let low = ((qs[half * 32 + j] >> (2 * plane)) & 3) as i8;
        let high_clear = ((hmask[j] >> (i / 32)) & 1) ^ 1;
        *o = d * scales[i / 16] * f32::from(low - 4 * high_clear as i8);
    }
}

/// Q4_K's and Q5_K's eight 6-bit (scale, minimum) pairs, packed in 12 bytes.
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Q4_K (d, dmin, scales[12], qs[128]) and Q5_K (the same with qh[32] before qs): sub-block
/// 2c + h of 32 weights takes nibble h of qs[32c..32c + 32] (and bit 2c + h of qh).
fn q45_k(b: &[u8], qh: Option<&[u8]>, o: &mut [f32]) {
    let (d, dmin) = (half16(b, 0), half16(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let qs = &b[if qh.is_some() { 48 } else { 16 }..];
    for (i, o) in o.iter_mut().enumerate() {
        let (sub, j) = (i / 32, i % 32);
        let mut q = (qs[(sub / 2) * 32 + j] >> (4 * (sub % 2))) & 0x0F;
        if let Some(qh) = qh {
            q |= ((qh[j] >> sub) & 1) << 4;
        }
        *o = d * f32::from(sc[sub]) * f32::from(q) - dmin * f32::from(mn[sub]);
    }
}

/// Q6_K: ql[128], qh[64], scales i8[16], d. Each half (128 weights) takes 64 bytes of ql (two
/// nibble planes) and 32 of qh (four 2-bit planes); weights are offset by 32.
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half16(b, 208);
    for (i, o) in o.iter_mut().enumerate() {
        let (half, r) = (i / 128, i % 128);
        let low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        *o = d * f32::from(scales[i / 16] as i8) * f32::from(((low | (high << 4)) as i8) - 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q8_0 by hand: the scale times each signed byte.
    #[test]
    fn q8_0_is_scale_times_bytes() {
        let mut block = vec![0u8; 34];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        block[2] = 4;
        block[3] = (-6i8) as u8;
        let mut out = [0f32; 32];
        GgmlType::Q8_0.dequantize(&block, &mut out);
        assert_eq!(&out[..3], &[2.0, -3.0, 0.0]);
    }

    #[test]
    fn unsupported_types_are_named() {
        assert_eq!(GgmlType::from_u32(20), Err("IQ4_NL".to_string()));
        assert_eq!(GgmlType::from_u32(99), Err("unknown type 99".to_string()));
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
        // Found by the fuzzing pass: a shape whose byte size overflows.
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX / 2), None);
    }
}
