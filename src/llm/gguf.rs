//! GGUF model files: a bounds-checked reader over a memory map, and a writer.
//!
//! Format (little-endian; see ggml's `docs/gguf.md`): the magic `GGUF`, a `u32` version, `u64`
//! tensor and metadata counts, the metadata key/value pairs (string key, `u32` value type,
//! value; arrays carry an element type and a `u64` length and may nest), then one info per
//! tensor (name, `u32` n_dims, `u64` dims with `dims[0]` the row length, `u32` ggml type, `u64`
//! offset relative to the data section), padding to `general.alignment` (default 32), and the
//! tensor data, each tensor at an aligned offset.
//!
//! **Reading.** [`GgufFile::open`] memory-maps the file and parses only the header: tensor data
//! is never read or copied at open, and [`GgufFile::tensor_data`] hands out zero-copy slices of
//! the map. We wrote our own parser rather than using the `gguf-rs` crate: it truncates
//! metadata arrays by default (we need the whole token list and merges) and its mmap feature
//! copies the whole file into memory.
//!
//! The files we parse may be hostile, so every count, length, offset and size is checked
//! against the bytes remaining before it is used, all arithmetic is checked, and nothing is
//! allocated from a count before the file is shown to hold at least count × the smallest
//! encoding of one element (so metadata never takes more than a few times the header's size in
//! memory). What is rejected, each with a one-line error naming the key or tensor:
//!
//! - versions other than 2 and 3 (version 1 used 32-bit counts; 2 and 3 share one little-endian
//!   layout) and big-endian files (`FUGG` magic, or a byte-swapped version number);
//! - strings that are not UTF-8 (we error rather than decode lossily: a token list silently
//!   rewritten would tokenize wrongly), booleans other than 0/1, unknown value types, arrays
//!   nested more than [`MAX_ARRAY_DEPTH`] deep, duplicate metadata keys;
//! - `general.alignment` that is not a `u32` power of two in 1..=[`MAX_ALIGNMENT`] (what ggml
//!   and gguf-py accept; the spec's "multiple of 8" is not enforced by them either);
//! - tensors with n_dims outside 1..=[`MAX_DIMS`], a zero dimension, an element or byte count
//!   that overflows, a row length that is not a whole number of blocks, a type id
//!   [`GgmlType::from_id`] rejects, an offset that is not a multiple of the alignment, data
//!   outside the file, data overlapping another tensor's, or a duplicate name.
//!
//! Padding after the last tensor is not required (llama.cpp does not require it either).
//!
//! **Mapped files must not change.** While a [`GgufFile`] is open, the file must not be
//! truncated or rewritten in place (truncation makes reads fault with SIGBUS; a rewrite changes
//! bytes we have already validated). Replace model files the way [`write_gguf`] does: write a
//! new file and rename it over the old one; open mappings keep the old inode.
//!
//! **Writing.** [`write_gguf`] writes version 3 with the alignment from `general.alignment`
//! (else 32), zero padding after the tensor infos and after every tensor, into a temporary file
//! in the target's directory that is renamed over the target once complete, so `path` never
//! holds a half-written file. [`write_gguf_to`] writes the same bytes to any writer.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;

use crate::kernels::GgmlType;

/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Largest `general.alignment` we accept (1 MiB).
pub const MAX_ALIGNMENT: usize = 1 << 20;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays (an array of scalars has depth 1).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

const MAGIC: &[u8; 4] = b"GGUF";
const MAGIC_BIG_ENDIAN: &[u8; 4] = b"FUGG";
const WRITE_VERSION: u32 = 3;
/// magic + version + tensor count + metadata count.
const HEADER_BYTES: usize = 24;
/// Smallest metadata entry: empty key (8), value type (4), a one-byte value.
const MIN_KV_BYTES: u64 = 13;
/// Smallest tensor info: empty name (8), n_dims (4), one dim (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 32;

// Metadata value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STR: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(MetaArray),
}

/// A metadata array: all elements have one type; arrays may nest.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    Array(Vec<MetaArray>),
}

/// Where one tensor is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF/ggml order: `dims[0]` (ne0) is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub n_bytes: usize,
    pub n_elements: u64,
}

enum Backing {
    Mmap(Mmap),
    Bytes(Vec<u8>),
}

/// A parsed GGUF file: its header in memory, its tensor data in a memory map (or in a
/// `Vec<u8>` for [`GgufFile::from_bytes`]).
pub struct GgufFile {
    data: Backing,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("size", &self.bytes().len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`. Errors name the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path)
            .map_err(|e| anyhow!("cannot open GGUF file {}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| anyhow!("cannot open GGUF file {}: {e}", path.display()))?
            .len();
        let bad = |e: anyhow::Error| anyhow!("bad GGUF file {}: {e:#}", path.display());
        if len < HEADER_BYTES as u64 {
            // Too short to be valid; read it (no mapping of tiny or empty files) for the error.
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow!("cannot read GGUF file {}: {e}", path.display()))?;
            let header = parse(&bytes).map_err(bad)?;
            return Ok(GgufFile::assemble(Backing::Bytes(bytes), header));
        }
        // SAFETY: the map aliases the file, so it stays sound only while the file is not
        // truncated (reads of lost pages fault with SIGBUS) or modified (the bytes behind our
        // `&[u8]`, and the bounds proven by `parse`, would change) for as long as it is mapped.
        // We treat model files as immutable: the map is read-only, nothing in this crate writes
        // to a file it has mapped, and `write_gguf` replaces files by renaming a new file over
        // the old one, which leaves existing maps on the old inode. The module docs ask anyone
        // replacing a model to do the same; an outside process rewriting it in place is beyond
        // our control.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| anyhow!("cannot map GGUF file {}: {e}", path.display()))?;
        let header = parse(&mmap).map_err(bad)?;
        Ok(GgufFile::assemble(Backing::Mmap(mmap), header))
    }

    /// Parses a GGUF file held in memory, with the same checks as [`GgufFile::open`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        let header = parse(&bytes).map_err(|e| anyhow!("bad GGUF data: {e:#}"))?;
        Ok(GgufFile::assemble(Backing::Bytes(bytes), header))
    }

    fn assemble(data: Backing, h: Header) -> GgufFile {
        GgufFile {
            data,
            version: h.version,
            alignment: h.alignment,
            data_offset: h.data_offset,
            metadata: h.metadata,
            meta_index: h.meta_index,
            tensors: h.tensors,
            tensor_index: h.tensor_index,
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Absolute offset of the data section (tensor offsets in the file are relative to it).
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Backing::Mmap(m) => m,
            Backing::Bytes(b) => b,
        }
    }

    /// Drop the resident pages of `bytes()[offset..offset + len]` (the whole pages inside it)
    /// from this process's memory: for tensors copied elsewhere at load (repacked weights), so
    /// RSS does not hold both copies. Best effort (a no-op for in-memory files, and errors are
    /// ignored): a later read of the range still returns the file's bytes, faulted in again.
    pub fn release_range(&self, offset: usize, len: usize) {
        let Backing::Mmap(m) = &self.data else {
            return;
        };
        // The kernel's page size (4 KiB on x86, 4, 16 or 64 KiB on aarch64 kernels: the Pi 5's
        // is 16 KiB): `madvise` needs a page-aligned start and rounds the length up.
        // SAFETY: `sysconf` has no preconditions and only reads a constant.
        #[cfg(unix)]
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        #[cfg(not(unix))]
        let page = 4096;
        let start = offset.next_multiple_of(page);
        let end = (offset.saturating_add(len)).min(m.len()) / page * page;
        if end <= start {
            return;
        }
        // SAFETY: `MADV_DONTNEED` on a read-only `MAP_SHARED` mapping of a file (`Mmap::map`)
        // only discards resident pages: the next access faults the same file bytes back in, so
        // every live borrow of the map (`bytes()`) keeps reading the same contents — the
        // hazard memmap2 guards against (private or writable mappings losing data) cannot
        // happen here. The range lies inside the map (clamped to `m.len()`) and starts on a
        // page boundary (the map itself is page-aligned).
        #[cfg(unix)]
        let _ = unsafe {
            m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Any integer value that fits in a `u32`.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get_int(key, "u32")
    }

    /// Any integer value that fits in a `u64`.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get_int(key, "u64")
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, want: &str) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let Some(i) = v.as_i128() else {
            bail!(
                "metadata key '{key}': expected {want}, found {}",
                v.type_name()
            );
        };
        T::try_from(i).map(Some).map_err(|_| {
            anyhow!(
                "metadata key '{key}': value {i} ({}) does not fit in {want}",
                v.type_name()
            )
        })
    }

    /// An `f32` value, or an `f64` one that is finite in `f32`.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::F32(x)) => Ok(Some(*x)),
            Some(MetaValue::F64(x)) => {
                let y = *x as f32;
                if x.is_finite() && !y.is_finite() {
                    bail!("metadata key '{key}': value {x} (f64) does not fit in f32");
                }
                Ok(Some(y))
            }
            Some(v) => bail!(
                "metadata key '{key}': expected f32, found {}",
                v.type_name()
            ),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => bail!(
                "metadata key '{key}': expected bool, found {}",
                v.type_name()
            ),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Str(s)) => Ok(Some(s)),
            Some(v) => bail!(
                "metadata key '{key}': expected string, found {}",
                v.type_name()
            ),
        }
    }

    /// An array of strings (an empty array of any element type gives `&[]`).
    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        self.get_array(key, "array<string>", |a| match a {
            MetaArray::Str(v) => Some(v),
            _ => None,
        })
    }

    /// An array of `f32` (an empty array of any element type gives `&[]`).
    pub fn get_f32_array(&self, key: &str) -> Result<Option<&[f32]>> {
        self.get_array(key, "array<f32>", |a| match a {
            MetaArray::F32(v) => Some(v),
            _ => None,
        })
    }

    /// An array of `i32` (an empty array of any element type gives `&[]`).
    pub fn get_i32_array(&self, key: &str) -> Result<Option<&[i32]>> {
        self.get_array(key, "array<i32>", |a| match a {
            MetaArray::I32(v) => Some(v),
            _ => None,
        })
    }

    fn get_array<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        pick: impl Fn(&'a MetaArray) -> Option<&'a [T]>,
    ) -> Result<Option<&'a [T]>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(a)) => match pick(a) {
                Some(v) => Ok(Some(v)),
                None if a.is_empty() => Ok(Some(&[])),
                None => bail!(
                    "metadata key '{key}': expected {want}, found {}",
                    a.type_name()
                ),
            },
            Some(v) => bail!(
                "metadata key '{key}': expected {want}, found {}",
                v.type_name()
            ),
        }
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The data of `t`, a zero-copy slice of the file (its bounds were checked at open).
    ///
    /// Panics if `t` does not lie inside this file (a `TensorInfo` of another file).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        t.offset
            .checked_add(t.n_bytes)
            .and_then(|end| self.bytes().get(t.offset..end))
            .unwrap_or_else(|| {
                panic!(
                    "tensor_data: tensor '{}' [{}, +{}) is not in this GGUF file",
                    t.name, t.offset, t.n_bytes
                )
            })
    }
}

impl MetaValue {
    /// The value's type: `u8` … `f64`, `bool`, `string`, or `array<T>`.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(a) => a.type_name(),
        }
    }

    /// The value of any integer type.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(x) => x.into(),
            MetaValue::I8(x) => x.into(),
            MetaValue::U16(x) => x.into(),
            MetaValue::I16(x) => x.into(),
            MetaValue::U32(x) => x.into(),
            MetaValue::I32(x) => x.into(),
            MetaValue::U64(x) => x.into(),
            MetaValue::I64(x) => x.into(),
            _ => return None,
        })
    }

    fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => T_U8,
            MetaValue::I8(_) => T_I8,
            MetaValue::U16(_) => T_U16,
            MetaValue::I16(_) => T_I16,
            MetaValue::U32(_) => T_U32,
            MetaValue::I32(_) => T_I32,
            MetaValue::U64(_) => T_U64,
            MetaValue::I64(_) => T_I64,
            MetaValue::F32(_) => T_F32,
            MetaValue::F64(_) => T_F64,
            MetaValue::Bool(_) => T_BOOL,
            MetaValue::Str(_) => T_STR,
            MetaValue::Array(_) => T_ARRAY,
        }
    }
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `array<T>` with T the element type (`array<array>` for nested arrays).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaArray::U8(_) => "array<u8>",
            MetaArray::I8(_) => "array<i8>",
            MetaArray::U16(_) => "array<u16>",
            MetaArray::I16(_) => "array<i16>",
            MetaArray::U32(_) => "array<u32>",
            MetaArray::I32(_) => "array<i32>",
            MetaArray::U64(_) => "array<u64>",
            MetaArray::I64(_) => "array<i64>",
            MetaArray::F32(_) => "array<f32>",
            MetaArray::F64(_) => "array<f64>",
            MetaArray::Bool(_) => "array<bool>",
            MetaArray::Str(_) => "array<string>",
            MetaArray::Array(_) => "array<array>",
        }
    }

    fn elem_type_id(&self) -> u32 {
        match self {
            MetaArray::U8(_) => T_U8,
            MetaArray::I8(_) => T_I8,
            MetaArray::U16(_) => T_U16,
            MetaArray::I16(_) => T_I16,
            MetaArray::U32(_) => T_U32,
            MetaArray::I32(_) => T_I32,
            MetaArray::U64(_) => T_U64,
            MetaArray::I64(_) => T_I64,
            MetaArray::F32(_) => T_F32,
            MetaArray::F64(_) => T_F64,
            MetaArray::Bool(_) => T_BOOL,
            MetaArray::Str(_) => T_STR,
            MetaArray::Array(_) => T_ARRAY,
        }
    }

    /// Nesting depth: 1 for an array of scalars or strings.
    fn depth(&self) -> usize {
        match self {
            MetaArray::Array(v) => 1 + v.iter().map(MetaArray::depth).max().unwrap_or(0),
            _ => 1,
        }
    }
}

/// Strings longer than this are cut short by `Display`.
const DISPLAY_STR_CHARS: usize = 60;
/// Arrays show this many items in `Display`.
const DISPLAY_ITEMS: usize = 5;

fn fmt_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    match s.char_indices().nth(DISPLAY_STR_CHARS) {
        None => write!(f, "{s:?}"),
        Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

fn fmt_items<T>(
    f: &mut fmt::Formatter<'_>,
    v: &[T],
    item: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    f.write_str("[")?;
    for (i, x) in v.iter().take(DISPLAY_ITEMS).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        item(f, x)?;
    }
    if v.len() > DISPLAY_ITEMS {
        f.write_str(", …")?;
    }
    f.write_str("]")
}

/// Short form for `llm info`: strings quoted and cut at 60 characters; arrays as
/// `array<T>[len] [first items, …]`.
impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(x) => write!(f, "{x}"),
            MetaValue::I8(x) => write!(f, "{x}"),
            MetaValue::U16(x) => write!(f, "{x}"),
            MetaValue::I16(x) => write!(f, "{x}"),
            MetaValue::U32(x) => write!(f, "{x}"),
            MetaValue::I32(x) => write!(f, "{x}"),
            MetaValue::U64(x) => write!(f, "{x}"),
            MetaValue::I64(x) => write!(f, "{x}"),
            MetaValue::F32(x) => write!(f, "{x}"),
            MetaValue::F64(x) => write!(f, "{x}"),
            MetaValue::Bool(x) => write!(f, "{x}"),
            MetaValue::Str(s) => fmt_str(f, s),
            MetaValue::Array(a) => write!(f, "{a}"),
        }
    }
}

impl fmt::Display for MetaArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn plain<T: fmt::Display>(f: &mut fmt::Formatter<'_>, x: &T) -> fmt::Result {
            write!(f, "{x}")
        }
        write!(f, "{}[{}] ", self.type_name(), self.len())?;
        match self {
            MetaArray::U8(v) => fmt_items(f, v, plain),
            MetaArray::I8(v) => fmt_items(f, v, plain),
            MetaArray::U16(v) => fmt_items(f, v, plain),
            MetaArray::I16(v) => fmt_items(f, v, plain),
            MetaArray::U32(v) => fmt_items(f, v, plain),
            MetaArray::I32(v) => fmt_items(f, v, plain),
            MetaArray::U64(v) => fmt_items(f, v, plain),
            MetaArray::I64(v) => fmt_items(f, v, plain),
            MetaArray::F32(v) => fmt_items(f, v, plain),
            MetaArray::F64(v) => fmt_items(f, v, plain),
            MetaArray::Bool(v) => fmt_items(f, v, plain),
            MetaArray::Str(v) => fmt_items(f, v, |f, s| fmt_str(f, s)),
            MetaArray::Array(v) => fmt_items(f, v, plain),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Everything `parse` learns from the header.
struct Header {
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// A cursor over untrusted bytes: every read is checked against what remains.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let rem = self.remaining();
        let n = match usize::try_from(n) {
            Ok(n) if n <= rem => n,
            _ => bail!(
                "{what} at byte {} needs {n} bytes but only {rem} remain (truncated file?)",
                self.pos
            ),
        };
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => bail!("{what} at byte {start} is not valid UTF-8 ({e})"),
        }
    }

    /// Proves the file holds `count` elements of at least `min_bytes` each before anything is
    /// allocated for them.
    fn count(&self, count: u64, min_bytes: u64, what: &str) -> Result<usize> {
        let rem = self.remaining();
        match count.checked_mul(min_bytes) {
            Some(need) if need <= rem as u64 => Ok(usize::try_from(count)?),
            _ => bail!(
                "{what} {count} at byte {} is impossible: the {rem} bytes left hold at most {}",
                self.pos,
                rem as u64 / min_bytes.max(1)
            ),
        }
    }
}

/// Bytes of the smallest encoding of one value of type `ty`.
fn min_value_bytes(ty: u32) -> Result<u64> {
    Ok(match ty {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        T_STR => 8,
        T_ARRAY => 12,
        _ => bail!("unknown metadata value type {ty}"),
    })
}

fn read_value(c: &mut Cursor<'_>, ty: u32) -> Result<MetaValue> {
    Ok(match ty {
        T_U8 => MetaValue::U8(u8::from_le_bytes(c.fixed("u8 value")?)),
        T_I8 => MetaValue::I8(i8::from_le_bytes(c.fixed("i8 value")?)),
        T_U16 => MetaValue::U16(u16::from_le_bytes(c.fixed("u16 value")?)),
        T_I16 => MetaValue::I16(i16::from_le_bytes(c.fixed("i16 value")?)),
        T_U32 => MetaValue::U32(u32::from_le_bytes(c.fixed("u32 value")?)),
        T_I32 => MetaValue::I32(i32::from_le_bytes(c.fixed("i32 value")?)),
        T_U64 => MetaValue::U64(u64::from_le_bytes(c.fixed("u64 value")?)),
        T_I64 => MetaValue::I64(i64::from_le_bytes(c.fixed("i64 value")?)),
        T_F32 => MetaValue::F32(f32::from_le_bytes(c.fixed("f32 value")?)),
        T_F64 => MetaValue::F64(f64::from_le_bytes(c.fixed("f64 value")?)),
        T_BOOL => {
            let pos = c.pos;
            MetaValue::Bool(to_bool(c.fixed::<1>("bool value")?[0], pos)?)
        }
        T_STR => MetaValue::Str(c.string("string value")?),
        T_ARRAY => MetaValue::Array(read_array(c, 1)?),
        _ => bail!("unknown metadata value type {ty}"),
    })
}

fn to_bool(b: u8, pos: usize) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => bail!("bool value at byte {pos} is {b} (must be 0 or 1)"),
    }
}

/// Reads an array whose nesting depth is `depth` (1 for a top-level array).
fn read_array(c: &mut Cursor<'_>, depth: usize) -> Result<MetaArray> {
    if depth > MAX_ARRAY_DEPTH {
        bail!(
            "array at byte {} is nested deeper than {MAX_ARRAY_DEPTH} levels",
            c.pos
        );
    }
    let ty = c.u32("array element type")?;
    let len = c.u64("array length")?;
    let min = min_value_bytes(ty).with_context(|| format!("array at byte {}", c.pos))?;
    let n = c.count(len, min, "array length")?;
    // `n * min` bytes are known to remain, so fixed-size reads below cannot fail.
    macro_rules! fixed_array {
        ($variant:ident, $t:ty) => {{
            let bytes = c.take(n as u64 * min, concat!("array<", stringify!($t), ">"))?;
            MetaArray::$variant(
                bytes
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|b| <$t>::from_le_bytes(b.try_into().unwrap_or_default()))
                    .collect(),
            )
        }};
    }
    Ok(match ty {
        T_U8 => MetaArray::U8(c.take(n as u64, "array<u8>")?.to_vec()),
        T_I8 => fixed_array!(I8, i8),
        T_U16 => fixed_array!(U16, u16),
        T_I16 => fixed_array!(I16, i16),
        T_U32 => fixed_array!(U32, u32),
        T_I32 => fixed_array!(I32, i32),
        T_U64 => fixed_array!(U64, u64),
        T_I64 => fixed_array!(I64, i64),
        T_F32 => fixed_array!(F32, f32),
        T_F64 => fixed_array!(F64, f64),
        T_BOOL => {
            let pos = c.pos;
            let bytes = c.take(n as u64, "array<bool>")?;
            let mut v = Vec::with_capacity(n);
            for (i, &b) in bytes.iter().enumerate() {
                v.push(to_bool(b, pos + i)?);
            }
            MetaArray::Bool(v)
        }
        T_STR => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(
                    c.string("string")
                        .with_context(|| format!("array<string> item {i}"))?,
                );
            }
            MetaArray::Str(v)
        }
        T_ARRAY => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_array(c, depth + 1).with_context(|| format!("array<array> item {i}"))?);
            }
            MetaArray::Array(v)
        }
        _ => bail!("unknown metadata value type {ty}"),
    })
}

/// Checks `general.alignment` (if present) and returns the alignment.
fn alignment_of(value: Option<&MetaValue>) -> Result<usize> {
    match value {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(MetaValue::U32(a)) => {
            let a = *a as usize;
            if !a.is_power_of_two() || a > MAX_ALIGNMENT {
                bail!("{ALIGNMENT_KEY} is {a}: must be a power of two from 1 to {MAX_ALIGNMENT}");
            }
            Ok(a)
        }
        Some(v) => bail!("{ALIGNMENT_KEY} must be a u32, found {}", v.type_name()),
    }
}

/// Element count and data size of a tensor, or why its shape is invalid.
fn tensor_size(ty: GgmlType, dims: &[u64]) -> Result<(u64, u64)> {
    if dims.is_empty() || dims.len() > MAX_DIMS {
        bail!("{} dimensions (must be 1 to {MAX_DIMS})", dims.len());
    }
    if let Some(d) = dims.iter().position(|&d| d == 0) {
        bail!("dimension {d} is 0 (dims {dims:?})");
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| anyhow!("element count of dims {dims:?} overflows"))?;
    let row = ty.row_bytes(dims[0]).ok_or_else(|| {
        if dims[0].is_multiple_of(ty.block_size() as u64) {
            anyhow!("row of {} {} elements is too large", dims[0], ty.name())
        } else {
            anyhow!(
                "row length {} is not a multiple of the {} block size {}",
                dims[0],
                ty.name(),
                ty.block_size()
            )
        }
    })?;
    let n_bytes = dims[1..]
        .iter()
        .try_fold(row, |n, &d| n.checked_mul(d))
        .ok_or_else(|| anyhow!("byte size of {} dims {dims:?} overflows", ty.name()))?;
    Ok((n_elements, n_bytes))
}

fn parse(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.fixed::<4>("magic")?;
    if &magic == MAGIC_BIG_ENDIAN {
        bail!(
            "big-endian GGUF files are not supported (magic \"FUGG\"); convert it to little-endian"
        );
    }
    if &magic != MAGIC {
        bail!("not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")");
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => bail!("GGUF version 1 is not supported (only versions 2 and 3)"),
        v if v != 0 && v & 0xffff == 0 => bail!(
            "big-endian GGUF files are not supported (version reads as {v:#010x}, i.e. {} byte-swapped)",
            v.swap_bytes()
        ),
        v => bail!("GGUF version {v} is not supported (only versions 2 and 3)"),
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    let size = buf.len();
    let kv_min = n_kv.checked_mul(MIN_KV_BYTES);
    let ti_min = n_tensors.checked_mul(MIN_TENSOR_INFO_BYTES);
    match kv_min.zip(ti_min).and_then(|(a, b)| a.checked_add(b)) {
        Some(need) if need <= c.remaining() as u64 => {}
        _ => bail!(
            "header claims {n_kv} metadata entries and {n_tensors} tensors, more than a {size}-byte file can hold"
        ),
    }

    let n = c.count(n_kv, MIN_KV_BYTES, "metadata count")?;
    let mut metadata = Vec::with_capacity(n);
    let mut meta_index = HashMap::with_capacity(n);
    for i in 0..n {
        let at = c.pos;
        let key = c
            .string("key")
            .with_context(|| format!("metadata entry {i}"))?;
        let value = c
            .u32("value type")
            .and_then(|ty| read_value(&mut c, ty))
            .with_context(|| format!("metadata key '{key}'"))?;
        if meta_index.insert(key.clone(), metadata.len()).is_some() {
            bail!("duplicate metadata key '{key}' at byte {at}");
        }
        metadata.push((key, value));
    }
    let alignment = alignment_of(meta_index.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1))?;

    let n = c.count(n_tensors, MIN_TENSOR_INFO_BYTES, "tensor count")?;
    let mut infos = Vec::with_capacity(n);
    let mut names = HashSet::with_capacity(n);
    for i in 0..n {
        let name = c.string("name").with_context(|| format!("tensor {i}"))?;
        let info =
            read_tensor_info(&mut c, alignment).with_context(|| format!("tensor '{name}'"))?;
        if !names.insert(name.clone()) {
            bail!("duplicate tensor name '{name}'");
        }
        infos.push((name, info));
    }
    let data_offset = c
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| anyhow!("data offset overflows"))?;

    let mut tensors = Vec::with_capacity(n);
    let mut tensor_index = HashMap::with_capacity(n);
    for (name, (dims, ty, rel, n_elements, n_bytes)) in infos {
        let n_bytes = usize::try_from(n_bytes)
            .map_err(|_| anyhow!("tensor '{name}': {n_bytes} bytes do not fit in memory"))?;
        let offset = usize::try_from(rel)
            .ok()
            .and_then(|r| data_offset.checked_add(r));
        let end = offset.and_then(|o| o.checked_add(n_bytes));
        let (Some(offset), Some(end)) = (offset, end) else {
            bail!("tensor '{name}': data offset {data_offset} + {rel} + {n_bytes} overflows");
        };
        if end > size {
            bail!(
                "tensor '{name}': data [{offset}, {end}) extends past the end of the file (size {size})"
            );
        }
        tensor_index.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_bytes,
            n_elements,
        });
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.offset + a.n_bytes > b.offset {
            bail!(
                "tensors '{}' [{}, {}) and '{}' [{}, {}) overlap",
                a.name,
                a.offset,
                a.offset + a.n_bytes,
                b.name,
                b.offset,
                b.offset + b.n_bytes
            );
        }
    }
    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        meta_index,
        tensors,
        tensor_index,
    })
}

/// dims, type, relative offset, element count, byte size.
type RawTensorInfo = (Vec<u64>, GgmlType, u64, u64, u64);

fn read_tensor_info(c: &mut Cursor<'_>, alignment: usize) -> Result<RawTensorInfo> {
    let n_dims = c.u32("n_dims")?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        bail!("{n_dims} dimensions (must be 1 to {MAX_DIMS})");
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64("dimension")?);
    }
    let ty = GgmlType::from_id(c.u32("type")?).map_err(|e| anyhow!(e))?;
    let rel = c.u64("offset")?;
    let (n_elements, n_bytes) = tensor_size(ty, &dims)?;
    if !rel.is_multiple_of(alignment as u64) {
        bail!("offset {rel} is not a multiple of the alignment {alignment}");
    }
    Ok((dims, ty, rel, n_elements, n_bytes))
}

// ---------------------------------------------------------------------------------------------
// Writing

/// A tensor to write: name, dims (ggml order), type, data.
pub type TensorToWrite<'a> = (String, Vec<u64>, GgmlType, &'a [u8]);

/// Writes a version-3 GGUF file to `path` atomically: the bytes go to a temporary file in the
/// same directory, which is synced and renamed over `path` only once complete.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorToWrite<'_>],
) -> Result<()> {
    let fail = |e: anyhow::Error| anyhow!("cannot write GGUF file {}: {e:#}", path.display());
    let file_name = path
        .file_name()
        .ok_or_else(|| fail(anyhow!("not a file path")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Check everything before creating any file.
    let plan = plan(metadata, tensors).map_err(fail)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}-{nanos}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let file = File::create_new(&tmp)
        .map_err(|e| fail(anyhow!("cannot create {}: {e}", tmp.display())))?;
    let result = (|| -> Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write_planned(&mut w, &plan, metadata, tensors)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to it", tmp.display()))?;
        Ok(())
    })();
    if result.is_err() {
        // Only ever the file we created above.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// Writes a version-3 GGUF file to `w`; returns the number of bytes written.
pub fn write_gguf_to<W: Write>(
    w: &mut W,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorToWrite<'_>],
) -> Result<u64> {
    let plan = plan(metadata, tensors)?;
    write_planned(w, &plan, metadata, tensors)
}

struct Plan {
    alignment: usize,
    /// Offset of each tensor relative to the data section.
    offsets: Vec<u64>,
}

/// Validates what is to be written (so the reader will accept it) and lays out the data.
fn plan(metadata: &[(String, MetaValue)], tensors: &[TensorToWrite<'_>]) -> Result<Plan> {
    let mut keys = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for (key, value) in metadata {
        if !keys.insert(key.as_str()) {
            bail!("duplicate metadata key '{key}'");
        }
        if key == ALIGNMENT_KEY {
            alignment = alignment_of(Some(value))?;
        }
        if let MetaValue::Array(a) = value {
            if a.depth() > MAX_ARRAY_DEPTH {
                bail!("metadata key '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH} levels");
            }
        }
    }
    let mut names = HashSet::new();
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut next = 0u64;
    for (name, dims, ty, data) in tensors {
        if !names.insert(name.as_str()) {
            bail!("duplicate tensor name '{name}'");
        }
        let (_, n_bytes) = tensor_size(*ty, dims).with_context(|| format!("tensor '{name}'"))?;
        if n_bytes != data.len() as u64 {
            bail!(
                "tensor '{name}': {} bytes of data, but {} {dims:?} takes {n_bytes}",
                data.len(),
                ty.name()
            );
        }
        offsets.push(next);
        next = next
            .checked_add(n_bytes)
            .and_then(|e| e.checked_next_multiple_of(alignment as u64))
            .ok_or_else(|| anyhow!("tensor data size overflows"))?;
    }
    Ok(Plan { alignment, offsets })
}

/// Counts what goes through it, to place the padding.
struct Counting<'w, W: Write> {
    w: &'w mut W,
    n: u64,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b)?;
        self.n += b.len() as u64;
        Ok(())
    }

    fn put_str(&mut self, s: &str) -> Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    fn pad(&mut self, alignment: usize) -> Result<()> {
        let pad = self.n.next_multiple_of(alignment as u64) - self.n;
        self.put(&vec![0u8; pad as usize])
    }

    fn value(&mut self, v: &MetaValue) -> Result<()> {
        match v {
            MetaValue::U8(x) => self.put(&x.to_le_bytes()),
            MetaValue::I8(x) => self.put(&x.to_le_bytes()),
            MetaValue::U16(x) => self.put(&x.to_le_bytes()),
            MetaValue::I16(x) => self.put(&x.to_le_bytes()),
            MetaValue::U32(x) => self.put(&x.to_le_bytes()),
            MetaValue::I32(x) => self.put(&x.to_le_bytes()),
            MetaValue::U64(x) => self.put(&x.to_le_bytes()),
            MetaValue::I64(x) => self.put(&x.to_le_bytes()),
            MetaValue::F32(x) => self.put(&x.to_le_bytes()),
            MetaValue::F64(x) => self.put(&x.to_le_bytes()),
            MetaValue::Bool(x) => self.put(&[u8::from(*x)]),
            MetaValue::Str(s) => self.put_str(s),
            MetaValue::Array(a) => self.array(a),
        }
    }

    fn array(&mut self, a: &MetaArray) -> Result<()> {
        self.put(&a.elem_type_id().to_le_bytes())?;
        self.put(&(a.len() as u64).to_le_bytes())?;
        macro_rules! each {
            ($v:expr) => {{
                for x in $v {
                    self.put(&x.to_le_bytes())?;
                }
                Ok(())
            }};
        }
        match a {
            MetaArray::U8(v) => self.put(v),
            MetaArray::I8(v) => each!(v),
            MetaArray::U16(v) => each!(v),
            MetaArray::I16(v) => each!(v),
            MetaArray::U32(v) => each!(v),
            MetaArray::I32(v) => each!(v),
            MetaArray::U64(v) => each!(v),
            MetaArray::I64(v) => each!(v),
            MetaArray::F32(v) => each!(v),
            MetaArray::F64(v) => each!(v),
            MetaArray::Bool(v) => {
                for &x in v {
                    self.put(&[u8::from(x)])?;
                }
                Ok(())
            }
            MetaArray::Str(v) => {
                for s in v {
                    self.put_str(s)?;
                }
                Ok(())
            }
            MetaArray::Array(v) => {
                for x in v {
                    self.array(x)?;
                }
                Ok(())
            }
        }
    }
}

fn write_planned<W: Write>(
    w: &mut W,
    plan: &Plan,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorToWrite<'_>],
) -> Result<u64> {
    let mut o = Counting { w, n: 0 };
    o.put(MAGIC)?;
    o.put(&WRITE_VERSION.to_le_bytes())?;
    o.put(&(tensors.len() as u64).to_le_bytes())?;
    o.put(&(metadata.len() as u64).to_le_bytes())?;
    for (key, value) in metadata {
        o.put_str(key)?;
        o.put(&value.type_id().to_le_bytes())?;
        o.value(value)?;
    }
    for ((name, dims, ty, _), offset) in tensors.iter().zip(&plan.offsets) {
        o.put_str(name)?;
        o.put(&(dims.len() as u32).to_le_bytes())?;
        for d in dims {
            o.put(&d.to_le_bytes())?;
        }
        o.put(&ty.id().to_le_bytes())?;
        o.put(&offset.to_le_bytes())?;
    }
    o.pad(plan.alignment)?;
    for (_, _, _, data) in tensors {
        o.put(data)?;
        o.pad(plan.alignment)?;
    }
    o.w.flush()?;
    Ok(o.n)
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    /// The default test model, relative to the crate root (fetched by `models/fetch`).
    pub const DEFAULT_TEST_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

    /// The real model for tests: `$EXPLLM_TEST_MODEL`, else [`DEFAULT_TEST_MODEL`]. Panics
    /// (failing the test) when it is missing, unless `EXPLLM_SKIP_MODEL_TESTS=1`: then it says
    /// so on stderr and returns `None`, and the caller skips.
    pub fn test_model_path() -> Option<PathBuf> {
        let path = match std::env::var_os("EXPLLM_TEST_MODEL") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_TEST_MODEL),
        };
        if path.is_file() {
            return Some(path);
        }
        if std::env::var("EXPLLM_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
            eprintln!(
                "model test skipped: no model at {} and EXPLLM_SKIP_MODEL_TESTS=1",
                path.display()
            );
            return None;
        }
        panic!(
            "test model {} not found: run `models/fetch` (or set EXPLLM_TEST_MODEL to a GGUF \
             file, or EXPLLM_SKIP_MODEL_TESTS=1 to skip model tests)",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Releasing mapped pages (what `Model` does after repacking a matrix) keeps every byte:
    /// the next read faults the file's bytes back in. Whole file, an unaligned middle range,
    /// an empty and an out-of-range one.
    #[test]
    fn released_pages_read_back_the_same_bytes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/llm/tiny-llama-kq.gguf"
        );
        let want = std::fs::read(path).unwrap();
        let f = GgufFile::open(Path::new(path)).unwrap();
        assert_eq!(f.bytes(), &want[..]);
        for (off, len) in [
            (0, want.len()),
            (1234, 20000),
            (5000, 0),
            (want.len() - 10, 99),
        ] {
            f.release_range(off, len);
            assert!(f.bytes() == &want[..], "after releasing {off}+{len}");
        }
    }

    // ---- raw GGUF bytes for hostile inputs --------------------------------------------------

    #[derive(Default)]
    struct Raw(Vec<u8>);

    impl Raw {
        fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
            let mut r = Raw::default();
            r.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
            r
        }
        fn bytes(&mut self, b: &[u8]) -> &mut Raw {
            self.0.extend_from_slice(b);
            self
        }
        fn u32(&mut self, x: u32) -> &mut Raw {
            self.bytes(&x.to_le_bytes())
        }
        fn u64(&mut self, x: u64) -> &mut Raw {
            self.bytes(&x.to_le_bytes())
        }
        fn str(&mut self, s: &str) -> &mut Raw {
            self.u64(s.len() as u64).bytes(s.as_bytes())
        }
        fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Raw {
            self.str(name).u32(dims.len() as u32);
            for &d in dims {
                self.u64(d);
            }
            self.u32(ty).u64(offset)
        }
        /// Pads to 32 and appends `n` data bytes.
        fn data(&mut self, n: usize) -> &mut Raw {
            let pad = self.0.len().next_multiple_of(32) - self.0.len();
            self.bytes(&vec![0; pad]).bytes(&vec![0x5a; n])
        }
        fn done(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.0)
        }
    }

    fn err_of(bytes: Vec<u8>) -> String {
        match GgufFile::from_bytes(bytes) {
            Ok(f) => panic!("accepted a bad file: {f:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[track_caller]
    fn assert_err(bytes: Vec<u8>, needles: &[&str]) {
        let e = err_of(bytes);
        assert!(!e.contains('\n'), "multi-line error: {e}");
        for n in needles {
            assert!(e.contains(n), "error {e:?} lacks {n:?}");
        }
    }

    // ---- valid files from the writer ----------------------------------------------------

    fn all_value_types() -> Vec<(String, MetaValue)> {
        let arrays = vec![
            MetaArray::U8(vec![0, 1, 255]),
            MetaArray::I8(vec![-128, 0, 127]),
            MetaArray::U16(vec![0, 65535]),
            MetaArray::I16(vec![-32768, 32767]),
            MetaArray::U32(vec![u32::MAX]),
            MetaArray::I32(vec![-1, 2, -3]),
            MetaArray::U64(vec![u64::MAX, 0]),
            MetaArray::I64(vec![i64::MIN]),
            MetaArray::F32(vec![1.5, -0.0, f32::INFINITY]),
            MetaArray::F64(vec![std::f64::consts::PI]),
            MetaArray::Bool(vec![true, false, true]),
            MetaArray::Str(vec!["".into(), "héllo".into(), "Ġthe".into()]),
            MetaArray::U8(vec![]),
        ];
        let mut m: Vec<(String, MetaValue)> = vec![
            ("t.u8".into(), MetaValue::U8(200)),
            ("t.i8".into(), MetaValue::I8(-100)),
            ("t.u16".into(), MetaValue::U16(60000)),
            ("t.i16".into(), MetaValue::I16(-30000)),
            ("t.u32".into(), MetaValue::U32(4_000_000_000)),
            ("t.i32".into(), MetaValue::I32(-2_000_000_000)),
            ("t.u64".into(), MetaValue::U64(u64::MAX)),
            ("t.i64".into(), MetaValue::I64(i64::MIN)),
            ("t.f32".into(), MetaValue::F32(1e-5)),
            ("t.f64".into(), MetaValue::F64(-2.5e300)),
            ("t.bool".into(), MetaValue::Bool(true)),
            ("t.str".into(), MetaValue::Str("ünïcödé ✓".into())),
            ("t.empty_str".into(), MetaValue::Str(String::new())),
            (
                "t.nested".into(),
                MetaValue::Array(MetaArray::Array(vec![
                    MetaArray::Array(vec![MetaArray::I32(vec![1, 2]), MetaArray::Str(vec![])]),
                    MetaArray::Str(vec!["x".into()]),
                ])),
            ),
            (ALIGNMENT_KEY.into(), MetaValue::U32(64)),
        ];
        for (i, a) in arrays.into_iter().enumerate() {
            m.push((format!("t.arr{i}"), MetaValue::Array(a)));
        }
        m
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A small valid file: a little metadata, three tensors, the last one ending the file.
    fn small_file() -> Vec<u8> {
        let meta = vec![
            (
                "general.architecture".to_string(),
                MetaValue::Str("llama".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                MetaValue::Array(MetaArray::Str(vec!["a".into(), "bc".into()])),
            ),
            (
                "x.nested".to_string(),
                MetaValue::Array(MetaArray::Array(vec![MetaArray::Bool(vec![true])])),
            ),
            ("x.n".to_string(), MetaValue::U32(7)),
        ];
        let q8 = pattern(34, 1);
        let f16 = pattern(6, 2);
        let f32 = pattern(32, 3);
        let tensors: Vec<TensorToWrite> = vec![
            ("q".into(), vec![32], GgmlType::Q8_0, &q8),
            ("h".into(), vec![3], GgmlType::F16, &f16),
            ("f".into(), vec![4, 2], GgmlType::F32, &f32),
        ];
        let mut out = Vec::new();
        write_gguf_to(&mut out, &meta, &tensors).unwrap();
        out
    }

    #[test]
    fn round_trip_all_value_types_and_tensor_types() {
        let meta = all_value_types();
        let f32s: Vec<u8> = (0..2 * 3).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let f16s = pattern(2 * 10, 7);
        let q4 = pattern(18 * 4, 9); // [64, 2]: 2 blocks per row
        let q8 = pattern(34 * 3, 11); // [32, 1, 3]
        let tensors: Vec<TensorToWrite> = vec![
            ("a.f32".into(), vec![3, 2], GgmlType::F32, &f32s),
            ("b.f16".into(), vec![5, 1, 1, 2], GgmlType::F16, &f16s),
            ("c.q4_0".into(), vec![64, 2], GgmlType::Q4_0, &q4),
            ("d.q8_0".into(), vec![32, 1, 3], GgmlType::Q8_0, &q8),
        ];
        let mut out = Vec::new();
        let n = write_gguf_to(&mut out, &meta, &tensors).unwrap();
        assert_eq!(n, out.len() as u64);
        let f = GgufFile::from_bytes(out).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(f.metadata(), &meta[..]);
        for (k, v) in &meta {
            assert_eq!(f.get(k), Some(v));
        }
        assert_eq!(f.tensors().len(), tensors.len());
        for ((name, dims, ty, data), t) in tensors.iter().zip(f.tensors()) {
            assert_eq!(&t.name, name);
            assert_eq!(&t.dims, dims);
            assert_eq!(t.ty, *ty);
            assert_eq!(t.n_bytes, data.len());
            assert_eq!(t.n_elements, dims.iter().product::<u64>());
            assert_eq!(t.offset % 64, 0);
            assert!(t.offset >= f.data_offset());
            assert_eq!(f.tensor_data(t), *data);
            assert_eq!(f.tensor(name), Some(t));
            // Zero copy: the slice points into the file's bytes.
            assert_eq!(f.tensor_data(t).as_ptr(), f.bytes()[t.offset..].as_ptr());
        }
        assert_eq!(f.tensor("nope"), None);
    }

    #[test]
    fn typed_getters() {
        let mut out = Vec::new();
        write_gguf_to(&mut out, &all_value_types(), &[]).unwrap();
        let f = GgufFile::from_bytes(out).unwrap();
        assert_eq!(f.get_u32("t.u8").unwrap(), Some(200));
        assert_eq!(
            f.get_u32("t.u64").unwrap_err().to_string(),
            "metadata key 't.u64': value 18446744073709551615 (u64) does not fit in u32"
        );
        assert_eq!(f.get_u64("t.u64").unwrap(), Some(u64::MAX));
        assert!(f
            .get_u64("t.i8")
            .unwrap_err()
            .to_string()
            .contains("-100 (i8)"));
        assert_eq!(f.get_u32("t.missing").unwrap(), None);
        assert_eq!(
            f.get_u32("t.str").unwrap_err().to_string(),
            "metadata key 't.str': expected u32, found string"
        );
        assert_eq!(f.get_f32("t.f32").unwrap(), Some(1e-5));
        assert!(f
            .get_f32("t.f64")
            .unwrap_err()
            .to_string()
            .contains("does not fit in f32"));
        assert!(f
            .get_f32("t.u8")
            .unwrap_err()
            .to_string()
            .contains("expected f32, found u8"));
        assert_eq!(f.get_bool("t.bool").unwrap(), Some(true));
        assert!(f.get_bool("t.u8").is_err());
        assert_eq!(f.get_str("t.str").unwrap(), Some("ünïcödé ✓"));
        assert!(f
            .get_str("t.arr11")
            .unwrap_err()
            .to_string()
            .contains("found array<string>"));
        assert_eq!(f.get_str_array("t.arr11").unwrap().unwrap()[1], "héllo");
        assert_eq!(f.get_str_array("t.arr12").unwrap(), Some(&[][..])); // empty u8 array
        assert_eq!(
            f.get_str_array("t.arr5").unwrap_err().to_string(),
            "metadata key 't.arr5': expected array<string>, found array<i32>"
        );
        assert_eq!(f.get_i32_array("t.arr5").unwrap(), Some(&[-1, 2, -3][..]));
        assert_eq!(f.get_f32_array("t.arr8").unwrap().unwrap()[0], 1.5);
        assert!(f.get_f32_array("t.str").is_err());
        assert_eq!(f.get_i32_array("t.missing").unwrap(), None);
    }

    #[test]
    fn display_is_short() {
        assert_eq!(MetaValue::U32(7).to_string(), "7");
        assert_eq!(MetaValue::Str("a\"b".into()).to_string(), "\"a\\\"b\"");
        let long = MetaValue::Str("x".repeat(1000));
        assert!(long.to_string().ends_with("… (1000 bytes)"));
        let a = MetaValue::Array(MetaArray::Str((0..100).map(|i| i.to_string()).collect()));
        assert_eq!(
            a.to_string(),
            r#"array<string>[100] ["0", "1", "2", "3", "4", …]"#
        );
        assert_eq!(a.type_name(), "array<string>");
        let n = MetaValue::Array(MetaArray::Array(vec![MetaArray::I32(vec![1, 2])]));
        assert_eq!(n.to_string(), "array<array>[1] [array<i32>[2] [1, 2]]");
        assert_eq!(MetaValue::Bool(false).type_name(), "bool");
    }

    #[test]
    fn writer_rejects_what_the_reader_would() {
        let d = [0u8; 8];
        let w = |m: &[(String, MetaValue)], t: &[TensorToWrite]| {
            format!("{:#}", write_gguf_to(&mut Vec::new(), m, t).unwrap_err())
        };
        let t = |name: &str, dims: Vec<u64>, ty| -> TensorToWrite { (name.into(), dims, ty, &d) };
        assert!(w(&[], &[t("a", vec![3], GgmlType::F32)]).contains("8 bytes of data"));
        assert!(w(
            &[],
            &[
                t("a", vec![2], GgmlType::F32),
                t("a", vec![2], GgmlType::F32)
            ]
        )
        .contains("duplicate tensor name 'a'"));
        assert!(w(&[], &[t("a", vec![], GgmlType::F32)]).contains("0 dimensions"));
        assert!(w(&[], &[t("a", vec![8], GgmlType::Q8_0)]).contains("block size 32"));
        let dup = vec![
            ("k".to_string(), MetaValue::U8(1)),
            ("k".to_string(), MetaValue::U8(2)),
        ];
        assert!(w(&dup, &[]).contains("duplicate metadata key 'k'"));
        let bad_align = vec![(ALIGNMENT_KEY.to_string(), MetaValue::U32(24))];
        assert!(w(&bad_align, &[]).contains("power of two"));
    }

    #[test]
    fn write_gguf_is_atomic_and_readable() {
        let dir = TempDir::new("write");
        let path = dir.0.join("m.gguf");
        let d = pattern(64, 5);
        let meta = vec![("a".to_string(), MetaValue::Str("b".into()))];
        write_gguf(&path, &meta, &[("t".into(), vec![16], GgmlType::F32, &d)]).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.tensor_data(&f.tensors()[0]), &d[..]);
        // A failed write leaves the old file alone and no temporary file behind.
        let e = write_gguf(&path, &meta, &[("t".into(), vec![15], GgmlType::F32, &d)]);
        assert!(format!("{:#}", e.unwrap_err()).contains("m.gguf"));
        assert_eq!(GgufFile::open(&path).unwrap().tensors()[0].dims, vec![16]);
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.gguf")]);
    }

    #[test]
    fn open_errors_name_the_file() {
        let dir = TempDir::new("open");
        let missing = dir.0.join("missing.gguf");
        let e = format!("{:#}", GgufFile::open(&missing).unwrap_err());
        assert!(e.contains("missing.gguf"), "{e}");
        let empty = dir.0.join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        let e = format!("{:#}", GgufFile::open(&empty).unwrap_err());
        assert!(
            e.starts_with("bad GGUF file ") && e.contains("empty.gguf"),
            "{e}"
        );
        let bad = dir.0.join("bad.gguf");
        let mut bytes = small_file();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&bad, &bytes).unwrap();
        let e = format!("{:#}", GgufFile::open(&bad).unwrap_err());
        assert!(
            e.starts_with("bad GGUF file ") && e.contains("bad.gguf: tensor 'f': data ["),
            "{e}"
        );
        assert!(e.contains("extends past the end of the file"), "{e}");
    }

    // ---- hostile input ----------------------------------------------------------------

    #[test]
    fn every_truncation_fails() {
        let bytes = small_file();
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        let last = f
            .tensors()
            .iter()
            .map(|t| t.offset + t.n_bytes)
            .max()
            .unwrap();
        assert_eq!(last, bytes.len(), "the last tensor should end the file");
        for n in 0..bytes.len() {
            assert_err(bytes[..n].to_vec(), &[]);
        }
    }

    #[test]
    fn bad_magic_and_versions() {
        let mut b = small_file();
        b[0] = b'X';
        assert_err(b, &["not a GGUF file"]);
        assert_err(
            Raw::header(1, 0, 0).done(),
            &["GGUF version 1 is not supported"],
        );
        assert_err(
            Raw::header(4, 0, 0).done(),
            &["GGUF version 4 is not supported"],
        );
        assert_err(Raw::header(3u32.swap_bytes(), 0, 0).done(), &["big-endian"]);
        let mut be = Raw::header(3, 0, 0).done();
        be[..4].copy_from_slice(b"FUGG");
        assert_err(be, &["big-endian"]);
        // Versions 2 and 3 read the same way.
        for v in [2, 3] {
            let f = GgufFile::from_bytes(Raw::header(v, 0, 0).done()).unwrap();
            assert_eq!(f.version(), v);
            assert_eq!(f.alignment(), 32);
        }
    }

    #[test]
    fn absurd_counts() {
        assert_err(
            Raw::header(3, u64::MAX, 0).done(),
            &["more than a 24-byte file can hold"],
        );
        assert_err(Raw::header(3, 0, u64::MAX).done(), &["metadata entries"]);
        assert_err(
            Raw::header(3, 1 << 40, 1 << 40).bytes(&[0; 1000]).done(),
            &["can hold"],
        );
        // 31 bytes cannot hold one tensor info.
        assert_err(Raw::header(3, 1, 0).bytes(&[0; 31]).done(), &["can hold"]);
    }

    #[test]
    fn huge_strings() {
        let mut r = Raw::header(3, 0, 1);
        r.u64(u64::MAX).bytes(&[b'k'; 100]);
        assert_err(
            r.done(),
            &[
                "metadata entry 0",
                "key",
                "needs 18446744073709551615 bytes",
            ],
        );
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(T_STR).u64(1 << 60).bytes(&[b'v'; 100]);
        assert_err(r.done(), &["metadata key 'k'", "string value"]);
        let mut r = Raw::header(3, 1, 0);
        r.u64(u64::MAX - 3).bytes(&[0; 100]);
        assert_err(r.done(), &["tensor 0", "name"]);
    }

    #[test]
    fn huge_arrays_of_every_type_fail_before_allocating() {
        for ty in 0..=12u32 {
            for len in [1u64 << 60, u64::MAX, 2000] {
                let mut r = Raw::header(3, 0, 1);
                r.str("k").u32(T_ARRAY).u32(ty).u64(len).bytes(&[1; 1000]);
                assert_err(r.done(), &["metadata key 'k'", "array length"]);
            }
        }
        // Unknown element type.
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(T_ARRAY).u32(13).u64(0);
        assert_err(r.done(), &["unknown metadata value type 13"]);
    }

    #[test]
    fn nested_array_depth_bomb() {
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(T_ARRAY);
        for _ in 0..100_000 {
            r.u32(T_ARRAY).u64(1);
        }
        assert_err(r.done(), &["nested deeper than 8 levels"]);
        // Depth 8 is fine.
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(T_ARRAY);
        for _ in 0..7 {
            r.u32(T_ARRAY).u64(1);
        }
        r.u32(T_U8).u64(1).bytes(&[9]);
        GgufFile::from_bytes(r.done()).unwrap();
    }

    #[test]
    fn bad_values() {
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(99).u32(0);
        assert_err(
            r.done(),
            &["metadata key 'k'", "unknown metadata value type 99"],
        );
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(T_BOOL).bytes(&[2]);
        assert_err(r.done(), &["metadata key 'k'", "must be 0 or 1"]);
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(T_STR).u64(2).bytes(&[0xff, 0xfe]);
        assert_err(r.done(), &["metadata key 'k'", "not valid UTF-8"]);
        let mut r = Raw::header(3, 0, 1);
        r.u64(1).bytes(&[0xc3]).u32(T_U8).bytes(&[0]);
        assert_err(r.done(), &["metadata entry 0", "not valid UTF-8"]);
        let mut r = Raw::header(3, 0, 2);
        r.str("k")
            .u32(T_U8)
            .bytes(&[0])
            .str("k")
            .u32(T_U8)
            .bytes(&[1]);
        assert_err(r.done(), &["duplicate metadata key 'k'"]);
    }

    #[test]
    fn bad_alignment() {
        for (v, msg) in [
            (MetaValue::U32(0), "power of two"),
            (MetaValue::U32(48), "power of two"),
            (MetaValue::U32(1 << 21), "power of two"),
            (MetaValue::U64(32), "must be a u32, found u64"),
        ] {
            let mut r = Raw::header(3, 0, 1);
            r.str(ALIGNMENT_KEY).u32(v.type_id());
            let mut c = Counting { w: &mut r.0, n: 0 };
            c.value(&v).unwrap();
            assert_err(r.done(), &[ALIGNMENT_KEY, msg]);
        }
    }

    /// One tensor `t` with the given info, then 4096 data bytes.
    fn one_tensor(dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
        Raw::header(3, 1, 0)
            .tensor("t", dims, ty, offset)
            .data(4096)
            .done()
    }

    #[test]
    fn bad_tensor_infos() {
        GgufFile::from_bytes(one_tensor(&[4, 4], 0, 0)).unwrap();
        assert_err(
            one_tensor(&[], 0, 0),
            &["tensor 't'", "0 dimensions (must be 1 to 4)"],
        );
        assert_err(one_tensor(&[1; 5], 0, 0), &["tensor 't'", "5 dimensions"]);
        let mut r = Raw::header(3, 1, 0);
        r.str("t").u32(u32::MAX).bytes(&[0; 64]);
        assert_err(r.done(), &["4294967295 dimensions"]);
        assert_err(
            one_tensor(&[4, 0], 0, 0),
            &["tensor 't'", "dimension 1 is 0"],
        );
        assert_err(
            one_tensor(&[1 << 32, 1 << 32, 1 << 32], 0, 0),
            &["tensor 't'", "element count", "overflows"],
        );
        assert_err(
            one_tensor(&[1 << 62, 2], 0, 0),
            &["tensor 't'", "too large"],
        );
        assert_err(
            one_tensor(&[1 << 31, 1 << 31], 0, 0),
            &["tensor 't'", "byte size", "overflows"],
        );
        assert_err(
            one_tensor(&[1 << 40, 1 << 20], 0, 0),
            &["tensor 't'", "past the end"],
        );
        assert_err(
            one_tensor(&[48, 1], 8, 0),
            &[
                "tensor 't'",
                "row length 48 is not a multiple of the Q8_0 block size 32",
            ],
        );
        assert_err(one_tensor(&[256], 13, 0), &["tensor 't'", "Q5_K"]);
        assert_err(
            one_tensor(&[256], 9999, 0),
            &["tensor 't'", "unknown tensor type id 9999"],
        );
        assert_err(
            one_tensor(&[4], 0, 16),
            &[
                "tensor 't'",
                "offset 16 is not a multiple of the alignment 32",
            ],
        );
        assert_err(
            one_tensor(&[4], 0, 4096),
            &["tensor 't'", "extends past the end of the file"],
        );
        assert_err(one_tensor(&[4], 0, u64::MAX - 31), &["tensor 't'"]);
        assert_err(
            one_tensor(&[1024, 2], 0, 0),
            &[
                "tensor 't': data [",
                "extends past the end of the file (size ",
            ],
        );
    }

    #[test]
    fn overlapping_and_duplicate_tensors() {
        let mut r = Raw::header(3, 2, 0);
        r.tensor("a", &[16], 0, 0)
            .tensor("b", &[8], 0, 32)
            .data(256);
        assert_err(r.done(), &["tensors 'a'", "'b'", "overlap"]);
        let mut r = Raw::header(3, 2, 0);
        r.tensor("a", &[16], 0, 64)
            .tensor("b", &[8], 0, 64)
            .data(256);
        assert_err(r.done(), &["overlap"]);
        let mut r = Raw::header(3, 2, 0);
        r.tensor("a", &[8], 0, 0).tensor("b", &[8], 0, 32).data(256);
        GgufFile::from_bytes(r.done()).unwrap();
        let mut r = Raw::header(3, 2, 0);
        r.tensor("a", &[8], 0, 0).tensor("a", &[8], 0, 32).data(256);
        assert_err(r.done(), &["duplicate tensor name 'a'"]);
    }

    #[test]
    fn random_mutations_never_panic() {
        let base = small_file();
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut accepted = 0;
        for _ in 0..5000 {
            let mut b = base.clone();
            for _ in 0..1 + rnd() % 4 {
                let i = (rnd() % b.len() as u64) as usize;
                match rnd() % 6 {
                    0 => b[i] ^= 1 << (rnd() % 8),
                    1 => b[i] = rnd() as u8,
                    2 => b.truncate(i),
                    3 => {
                        // An extreme count, length or offset.
                        let v = [0, 1, u64::MAX, 1 << 63, 1 << 32, rnd()][(rnd() % 6) as usize];
                        let end = (i + 8).min(b.len());
                        let n = end - i;
                        b[i..end].copy_from_slice(&v.to_le_bytes()[..n]);
                    }
                    4 => b.insert(i, rnd() as u8),
                    _ => {
                        b.remove(i);
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            if let Ok(f) = GgufFile::from_bytes(b) {
                accepted += 1;
                for t in f.tensors() {
                    assert_eq!(f.tensor_data(t).len(), t.n_bytes);
                }
                for (_, v) in f.metadata() {
                    let _ = v.to_string();
                }
            }
        }
        assert!(
            accepted > 0,
            "no mutation was accepted (some only touch padding or data)"
        );
    }

    // ---- the real model -------------------------------------------------------------

    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = std::env::temp_dir()
                .join(format!("expllm-gguf-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn real_model() {
        let Some(path) = test_support::test_model_path() else {
            return;
        };
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.tensors().len(), 272);
        assert_eq!(f.get_u32("llama.block_count").unwrap(), Some(30));
        assert_eq!(f.get_str("general.architecture").unwrap(), Some("llama"));
        let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
        assert_eq!(tokens.len(), 49152);
        assert_eq!(
            f.get_i32_array("tokenizer.ggml.token_type")
                .unwrap()
                .unwrap()
                .len(),
            49152
        );
        assert_eq!(
            f.get_str_array("tokenizer.ggml.merges")
                .unwrap()
                .unwrap()
                .len(),
            48900
        );
        let t = f.tensor("token_embd.weight").unwrap();
        assert_eq!(t.ty, GgmlType::Q8_0);
        assert_eq!(t.dims, vec![576, 49152]);
        assert_eq!(t.n_elements, 576 * 49152);
        assert_eq!(t.n_bytes, 576 / 32 * 34 * 49152);
        // As gguf-py's GGUFReader reports it (`.data_offset`).
        assert_eq!(t.offset, 1_785_664);
        assert_eq!(f.data_offset(), 1_785_664);
        for t in f.tensors() {
            assert!(
                matches!(t.ty, GgmlType::F32 | GgmlType::Q4_1 | GgmlType::Q8_0),
                "{t:?}"
            );
        }

        // Written back out, it reads back the same.
        let dir = TempDir::new("model");
        let copy = dir.0.join("copy.gguf");
        let tensors: Vec<TensorToWrite> = f
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone(), t.ty, f.tensor_data(t)))
            .collect();
        write_gguf(&copy, f.metadata(), &tensors).unwrap();
        let g = GgufFile::open(&copy).unwrap();
        assert_eq!(g.metadata(), f.metadata());
        assert_eq!(g.tensors().len(), f.tensors().len());
        for (a, b) in f.tensors().iter().zip(g.tensors()) {
            assert_eq!(
                (&a.name, &a.dims, a.ty, a.offset),
                (&b.name, &b.dims, b.ty, b.offset)
            );
            assert!(
                f.tensor_data(a) == g.tensor_data(b),
                "tensor '{}' differs",
                a.name
            );
        }
        // Our layout is the one llama.cpp's writer uses: the copy is byte for byte the same.
        assert!(
            f.bytes() == g.bytes(),
            "rewritten file differs from the original"
        );
    }
}
