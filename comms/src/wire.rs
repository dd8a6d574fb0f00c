//! The tensor-set wire format, version 1.
//!
//! ```text
//! frame   = magic "SNTR" | version u16 | flags u16 (0) | body_len u32 | decoded_len u32
//!           | crc32 u32 (of the 16 header bytes before it and the body) | body
//! body    = zstd(tensors)
//! tensors = count u32 | tensor*
//! tensor  = name_len u16 | name (UTF-8) | rank u8 | dims u64*rank | dtype u8 | data
//! data    = dtype 0 (int8 blocks): block u32 | scale_dtype u8 (0 f32, 1 f16)
//!                                  | scales (f32 or f16, one per block) | codes i8*n
//!         | dtype 1 (f32):         values f32*n
//!         | dtype 2 (sparse top-k): chunk u32 | k u32 | bits u8 | scales f32*chunks
//!                                  | index gaps (varints) | packed codes (sinter_kernels::sparse)
//! ```
//! All integers little-endian. Decoding trusts nothing: every length is checked against what
//! remains and against [`CodecLimits`] before anything is allocated, the zstd output is
//! bounded by the declared (and capped) decoded length, and every failure is a [`WireError`].

use sinter_kernels::{
    KernelError, QuantConfig, QuantizedTensor, ScaleDtype, SparseConfig, SparseTensor,
};

const MAGIC: [u8; 4] = *b"SNTR";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
const HEADER_LEN: usize = 20;
const MAX_RANK: usize = 8;
const MAX_NAME_LEN: usize = 1024;
const DTYPE_INT8: u8 = 0;
const DTYPE_F32: u8 = 1;
const DTYPE_SPARSE: u8 = 2;

/// A tensor's values as they travel.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorPayload {
    /// Blockwise int8 with absmax scales.
    Int8(QuantizedTensor),
    /// Full-precision values.
    F32(Vec<f32>),
    /// The top-k entries of each chunk, low-bit.
    Sparse(SparseTensor),
}

impl TensorPayload {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            TensorPayload::Int8(q) => q.len(),
            TensorPayload::F32(v) => v.len(),
            TensorPayload::Sparse(s) => s.len,
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of values and scales, before compression: the all-reduce payload.
    pub fn payload_bytes(&self) -> usize {
        match self {
            TensorPayload::Int8(q) => q.payload_bytes(),
            TensorPayload::F32(v) => v.len() * 4,
            TensorPayload::Sparse(s) => s.payload_bytes(),
        }
    }
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTensor {
    /// Parameter name, e.g. `layers.0.attention.wq.weight`.
    pub name: String,
    /// Dimensions; their product is the payload's length.
    pub shape: Vec<usize>,
    /// The values.
    pub payload: TensorPayload,
}

/// What one frame carries: e.g. a peer's whole pseudo-gradient for one round.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TensorSet {
    /// The tensors, in the order the sender wrote them.
    pub tensors: Vec<WireTensor>,
}

impl TensorSet {
    /// Bytes of values and scales of all tensors, before compression.
    pub fn payload_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.payload.payload_bytes()).sum()
    }
}

/// Bounds on what a decoder accepts from an untrusted peer.
#[derive(Debug, Clone, Copy)]
pub struct CodecLimits {
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Largest decompressed body accepted, in bytes.
    pub max_decoded_bytes: usize,
    /// Most tensors in one frame.
    pub max_tensors: usize,
}

impl Default for CodecLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1 << 30,
            max_decoded_bytes: 1 << 30,
            max_tensors: 4096,
        }
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    /// The input ended before `what` was complete.
    #[error("truncated frame: {what} needs {needed} bytes, {available} remain")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// Not a sinter frame.
    #[error("bad magic {0:02x?}: not a sinter tensor frame")]
    BadMagic([u8; 4]),
    /// A version this build does not read.
    #[error("unknown frame version {found} (this build reads version {VERSION})")]
    UnknownVersion {
        /// The version in the frame.
        found: u16,
    },
    /// Reserved flags were set.
    #[error("unknown frame flags {0:#06x}")]
    UnknownFlags(u16),
    /// The checksum does not match the bytes.
    #[error("checksum mismatch: frame says {expected:#010x}, bytes give {actual:#010x}")]
    Checksum {
        /// Checksum in the frame.
        expected: u32,
        /// Checksum of the bytes received.
        actual: u32,
    },
    /// A size is beyond what the limits allow.
    #[error("{what} of {size} exceeds the limit of {limit}")]
    Oversize {
        /// What is too big.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The compressed body is not valid zstd or does not decode to its declared length.
    #[error("body does not decompress: {0}")]
    Decompress(String),
    /// A tensor's shape does not match its data.
    #[error("tensor {name:?}: {detail}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// What does not match.
        detail: String,
    },
    /// A tensor name is not UTF-8 or too long.
    #[error("invalid tensor name: {0}")]
    InvalidName(String),
    /// A dtype code this version does not define.
    #[error("tensor {name:?}: unknown dtype {code}")]
    UnknownDtype {
        /// The tensor.
        name: String,
        /// The code found.
        code: u8,
    },
    /// Quantized data that is inconsistent (bad block size, negative or non-finite scale…).
    #[error("tensor {name:?}: {source}")]
    InvalidTensor {
        /// The tensor.
        name: String,
        /// What the kernels' validation found.
        source: KernelError,
    },
    /// Full-precision values that are NaN or infinite.
    #[error("tensor {name:?}: non-finite value at element {index}")]
    NonFinite {
        /// The tensor.
        name: String,
        /// First bad element.
        index: usize,
    },
    /// Bytes remain after the last tensor.
    #[error("{0} unexpected bytes after the last tensor")]
    TrailingBytes(usize),
}

/// Encodes a tensor set into one frame, compressing with zstd at `level` (1–22; 3 is a good default).
pub fn encode(set: &TensorSet, level: i32) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::with_capacity(set.payload_bytes() + 64 * set.tensors.len() + 4);
    put_u32(&mut body, set.tensors.len())?;
    for t in &set.tensors {
        check_shape(t)?;
        if t.name.len() > MAX_NAME_LEN {
            return Err(WireError::InvalidName(format!(
                "{} bytes long, at most {MAX_NAME_LEN}",
                t.name.len()
            )));
        }
        body.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
        body.extend_from_slice(t.name.as_bytes());
        body.push(t.shape.len() as u8);
        for &d in &t.shape {
            body.extend_from_slice(&(d as u64).to_le_bytes());
        }
        match &t.payload {
            TensorPayload::Int8(q) => {
                q.validate().map_err(|source| WireError::InvalidTensor {
                    name: t.name.clone(),
                    source,
                })?;
                body.push(DTYPE_INT8);
                put_u32(&mut body, q.config.block)?;
                match q.config.scale {
                    ScaleDtype::F32 => {
                        body.push(0);
                        q.scales
                            .iter()
                            .for_each(|s| body.extend_from_slice(&s.to_le_bytes()));
                    }
                    ScaleDtype::F16 => {
                        body.push(1);
                        q.scales.iter().for_each(|s| {
                            body.extend_from_slice(&half::f16::from_f32(*s).to_le_bytes())
                        });
                    }
                }
                body.extend(q.codes.iter().map(|&c| c as u8));
            }
            TensorPayload::F32(values) => {
                body.push(DTYPE_F32);
                values
                    .iter()
                    .for_each(|v| body.extend_from_slice(&v.to_le_bytes()));
            }
            TensorPayload::Sparse(sparse) => {
                sparse
                    .validate()
                    .map_err(|source| WireError::InvalidTensor {
                        name: t.name.clone(),
                        source,
                    })?;
                body.push(DTYPE_SPARSE);
                put_u32(&mut body, sparse.config.chunk)?;
                put_u32(&mut body, sparse.config.k)?;
                body.push(sparse.config.bits);
                sparse
                    .scales
                    .iter()
                    .for_each(|s| body.extend_from_slice(&s.to_le_bytes()));
                sparse.write_gaps(&mut body);
                body.extend_from_slice(&sparse.codes);
            }
        }
    }
    frame(&body, level)
}

/// Wraps an already serialised tensor body in a frame: compression, header, checksum.
/// [`encode`] uses it; tests and the fuzz target use it to put arbitrary bodies behind a
/// valid header and reach the tensor parser.
pub fn frame(body: &[u8], level: i32) -> Result<Vec<u8>, WireError> {
    let compressed =
        zstd::bulk::compress(body, level).map_err(|e| WireError::Decompress(e.to_string()))?;
    let mut frame = Vec::with_capacity(HEADER_LEN + compressed.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&VERSION.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    put_u32(&mut frame, compressed.len())?;
    put_u32(&mut frame, body.len())?;
    let crc = checksum(&frame[..16], &compressed);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(&compressed);
    Ok(frame)
}

/// Decodes one frame from untrusted bytes.
pub fn decode(bytes: &[u8], limits: &CodecLimits) -> Result<TensorSet, WireError> {
    if bytes.len() > limits.max_frame_bytes {
        return Err(WireError::Oversize {
            what: "frame",
            size: bytes.len(),
            limit: limits.max_frame_bytes,
        });
    }
    let mut header = Reader { bytes, pos: 0 };
    let magic: [u8; 4] = header.take("magic", 4)?.try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = header.u16("version")?;
    if version != VERSION {
        return Err(WireError::UnknownVersion { found: version });
    }
    let flags = header.u16("flags")?;
    if flags != 0 {
        return Err(WireError::UnknownFlags(flags));
    }
    let body_len = header.u32("body length")? as usize;
    let decoded_len = header.u32("decoded length")? as usize;
    let expected = header.u32("checksum")?;
    let body = header.take("body", body_len)?;
    if header.remaining() != 0 {
        return Err(WireError::TrailingBytes(header.remaining()));
    }
    let actual = checksum(&bytes[..16], body);
    if actual != expected {
        return Err(WireError::Checksum { expected, actual });
    }
    if decoded_len > limits.max_decoded_bytes {
        return Err(WireError::Oversize {
            what: "decoded body",
            size: decoded_len,
            limit: limits.max_decoded_bytes,
        });
    }
    let decoded = zstd::bulk::decompress(body, decoded_len)
        .map_err(|e| WireError::Decompress(e.to_string()))?;
    if decoded.len() != decoded_len {
        return Err(WireError::Decompress(format!(
            "{} bytes, header declared {decoded_len}",
            decoded.len()
        )));
    }
    decode_tensors(&decoded, limits)
}

/// A sparse tensor of `len` values: every count is checked against the bytes that remain
/// before anything is allocated.
fn read_sparse(r: &mut Reader<'_>, name: &str, len: usize) -> Result<SparseTensor, WireError> {
    let invalid = |source| WireError::InvalidTensor {
        name: name.to_owned(),
        source,
    };
    let chunk = r.u32("chunk size")? as usize;
    let k = r.u32("entries per chunk")? as usize;
    let bits = r.u8("bits per value")?;
    let config = SparseConfig { chunk, k, bits };
    config.validate().map_err(invalid)?;
    let scales = r
        .take("scales", config.chunks(len).saturating_mul(4))?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
        .collect();
    let (indices, read) =
        SparseTensor::read_gaps(config, len, &r.bytes[r.pos..]).map_err(invalid)?;
    r.pos += read;
    let (_, code_bytes) = config.totals(len);
    let codes = r.take("codes", code_bytes)?.to_vec();
    let sparse = SparseTensor {
        config,
        len,
        scales,
        indices,
        codes,
    };
    sparse.validate().map_err(invalid)?;
    Ok(sparse)
}

fn decode_tensors(body: &[u8], limits: &CodecLimits) -> Result<TensorSet, WireError> {
    let mut r = Reader {
        bytes: body,
        pos: 0,
    };
    let count = r.u32("tensor count")? as usize;
    if count > limits.max_tensors {
        return Err(WireError::Oversize {
            what: "tensor count",
            size: count,
            limit: limits.max_tensors,
        });
    }
    let mut tensors = Vec::with_capacity(count.min(r.remaining() / 12));
    for _ in 0..count {
        let name_len = r.u16("name length")? as usize;
        if name_len > MAX_NAME_LEN {
            return Err(WireError::InvalidName(format!(
                "{name_len} bytes long, at most {MAX_NAME_LEN}"
            )));
        }
        let name = std::str::from_utf8(r.take("name", name_len)?)
            .map_err(|e| WireError::InvalidName(e.to_string()))?
            .to_owned();
        let rank = r.u8("rank")? as usize;
        if rank > MAX_RANK {
            return Err(WireError::ShapeMismatch {
                name,
                detail: format!("rank {rank} exceeds {MAX_RANK}"),
            });
        }
        let mut shape = Vec::with_capacity(rank);
        let mut len: usize = 1;
        for _ in 0..rank {
            let d = usize::try_from(r.u64("dimension")?).unwrap_or(usize::MAX);
            len = len.checked_mul(d).ok_or_else(|| WireError::ShapeMismatch {
                name: name.clone(),
                detail: "element count overflows".into(),
            })?;
            shape.push(d);
        }
        let payload = match r.u8("dtype")? {
            DTYPE_INT8 => {
                let block = r.u32("block size")? as usize;
                let scale = match r.u8("scale dtype")? {
                    0 => ScaleDtype::F32,
                    1 => ScaleDtype::F16,
                    code => return Err(WireError::UnknownDtype { name, code }),
                };
                let config = QuantConfig { block, scale };
                config
                    .validate()
                    .map_err(|source| WireError::InvalidTensor {
                        name: name.clone(),
                        source,
                    })?;
                let blocks = config.blocks(len);
                let scale_bytes = r.take("scales", blocks.saturating_mul(scale.bytes()))?;
                let scales = match scale {
                    ScaleDtype::F32 => scale_bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                        .collect(),
                    ScaleDtype::F16 => scale_bytes
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes(c.try_into().expect("2")).to_f32())
                        .collect(),
                };
                let codes: Vec<i8> = r.take("codes", len)?.iter().map(|&b| b as i8).collect();
                if codes.contains(&i8::MIN) {
                    return Err(WireError::ShapeMismatch {
                        name,
                        detail: "code -128 is outside -127..=127".into(),
                    });
                }
                let q = QuantizedTensor {
                    config,
                    codes,
                    scales,
                };
                q.validate().map_err(|source| WireError::InvalidTensor {
                    name: name.clone(),
                    source,
                })?;
                TensorPayload::Int8(q)
            }
            DTYPE_F32 => {
                let raw = r.take("values", len.saturating_mul(4))?;
                let values: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                    .collect();
                if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                    return Err(WireError::NonFinite { name, index });
                }
                TensorPayload::F32(values)
            }
            DTYPE_SPARSE => TensorPayload::Sparse(read_sparse(&mut r, &name, len)?),
            code => return Err(WireError::UnknownDtype { name, code }),
        };
        tensors.push(WireTensor {
            name,
            shape,
            payload,
        });
    }
    if r.remaining() != 0 {
        return Err(WireError::TrailingBytes(r.remaining()));
    }
    Ok(TensorSet { tensors })
}

fn check_shape(t: &WireTensor) -> Result<(), WireError> {
    let product: usize = t.shape.iter().product();
    if t.shape.len() > MAX_RANK || product != t.payload.len() {
        return Err(WireError::ShapeMismatch {
            name: t.name.clone(),
            detail: format!(
                "shape {:?} holds {product} values, payload has {}",
                t.shape,
                t.payload.len()
            ),
        });
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, v: usize) -> Result<(), WireError> {
    let v = u32::try_from(v).map_err(|_| WireError::Oversize {
        what: "length field",
        size: v,
        limit: u32::MAX as usize,
    })?;
    out.extend_from_slice(&v.to_le_bytes());
    Ok(())
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(body);
    h.finalize()
}

/// A cursor over untrusted bytes whose every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated {
                what,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(what, 1)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(
            self.take(what, 2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(what, 4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(what, 8)?.try_into().expect("8 bytes"),
        ))
    }
}
