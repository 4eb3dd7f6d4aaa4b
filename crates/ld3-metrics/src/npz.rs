//! `.npz` writing: numpy's zip of `.npy` arrays (stored, version 1.0 headers), as `np.savez`
//! writes them and `np.load` and candle's `Tensor::read_npz*` read them.
//!
//! Each array goes out in blocks through a buffered file. candle's `Tensor::write_npz` hands its
//! unbuffered zip entry one number at a time — a system call per number: 4.2M for one 2048²
//! covariance, ~100M for the features of a 50k-image FID set.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::{DType, Tensor};
use ld3_solvers::{Error, Result};

/// Numbers per block written to the zip entry.
const BLOCK: usize = 1 << 16;

/// numpy's `descr` for `dtype`, if numpy has it.
fn descr(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F64 => "<f8",
        DType::F32 => "<f4",
        DType::U8 => "|u1",
        DType::U32 => "<u4",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        _ => return None,
    })
}

/// The `.npy` header of an array of `dtype` and `shape`: magic, version 1.0, the header's length
/// and the dictionary, padded with spaces to a multiple of 64 bytes and ended by a newline
/// (`None` past version 1.0's 65535 bytes, thousands of dimensions).
fn npy_header(descr: &str, shape: &[usize]) -> Option<Vec<u8>> {
    let dims = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // 6 magic + 2 version + 2 length bytes, then the dictionary and its newline.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    header.extend_from_slice(&u16::try_from(dict.len()).ok()?.to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    Some(header)
}

/// `values` as little-endian bytes, a block at a time.
fn write_blocks<T: Copy, const B: usize>(
    values: &[T],
    out: &mut impl Write,
    bytes: impl Fn(T) -> [u8; B],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(BLOCK.min(values.len()) * B);
    for block in values.chunks(BLOCK) {
        buf.clear();
        buf.extend(block.iter().flat_map(|&v| bytes(v)));
        out.write_all(&buf)?;
    }
    Ok(())
}

/// `t`'s numbers in row-major order, little-endian (its dtype checked by [`descr`]).
fn write_data(t: &Tensor, out: &mut impl Write) -> Result<std::io::Result<()>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F64 => write_blocks(&t.to_vec1::<f64>()?, out, f64::to_le_bytes),
        DType::F32 => write_blocks(&t.to_vec1::<f32>()?, out, f32::to_le_bytes),
        DType::U8 => write_blocks(&t.to_vec1::<u8>()?, out, u8::to_le_bytes),
        DType::U32 => write_blocks(&t.to_vec1::<u32>()?, out, u32::to_le_bytes),
        DType::I16 => write_blocks(&t.to_vec1::<i16>()?, out, i16::to_le_bytes),
        DType::I32 => write_blocks(&t.to_vec1::<i32>()?, out, i32::to_le_bytes),
        DType::I64 => write_blocks(&t.to_vec1::<i64>()?, out, i64::to_le_bytes),
        other => {
            return Err(Error::Invalid(format!(
                "an .npz cannot hold {other:?} numbers"
            )))
        }
    })
}

/// Writes `arrays` (name, tensor) to `path` as numpy's `np.savez` does: one stored `NAME.npy`
/// entry per array, in the given order.
pub fn write_npz(path: &Path, arrays: &[(&str, &Tensor)]) -> Result<()> {
    let io = |cause: std::io::Error| Error::Io {
        path: path.display().to_string(),
        cause,
    };
    let zip_error = |e: zip::result::ZipError| Error::Io {
        path: path.display().to_string(),
        cause: std::io::Error::other(e),
    };
    let mut headers = Vec::with_capacity(arrays.len());
    for (name, t) in arrays {
        let Some(descr) = descr(t.dtype()) else {
            return Err(Error::Invalid(format!(
                "{}: array {name} holds {:?} numbers, which .npz cannot",
                path.display(),
                t.dtype()
            )));
        };
        let header = npy_header(descr, t.dims()).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: array {name} has {} dimensions, too many for an .npy header",
                path.display(),
                t.rank()
            ))
        })?;
        headers.push(header);
    }
    let file = File::create(path).map_err(io)?;
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for ((name, t), header) in arrays.iter().zip(&headers) {
        zip.start_file(format!("{name}.npy"), options)
            .map_err(zip_error)?;
        zip.write_all(header).map_err(io)?;
        write_data(t, &mut zip)?.map_err(io)?;
    }
    let mut file = zip.finish().map_err(zip_error)?;
    file.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn headers_are_numpys() {
        let h = npy_header("<f8", &[2048, 2048]).unwrap();
        assert_eq!(h.len() % 64, 0);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(
            text.starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (2048, 2048), }")
        );
        assert!(text.ends_with(" \n"));
        let len = u16::from_le_bytes([h[8], h[9]]) as usize;
        assert_eq!(len, h.len() - 10);
        let one = npy_header("<f4", &[3]).unwrap();
        assert!(std::str::from_utf8(&one[10..])
            .unwrap()
            .contains("'shape': (3,)"));
        let scalar = npy_header("<f4", &[]).unwrap();
        assert!(npy_header("<f4", &[1; 30_000]).is_none());
        assert!(std::str::from_utf8(&scalar[10..])
            .unwrap()
            .contains("'shape': ()"));
    }

    /// What this writes, candle's reader reads back exactly, for every dtype and a few shapes
    /// (one over a block).
    #[test]
    fn arrays_read_back_exactly() {
        let dev = Device::Cpu;
        let dir = std::env::temp_dir().join(format!("ld3-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npz");
        let big = Tensor::randn(0f64, 1.0, (3, BLOCK / 2 + 5), &dev).unwrap();
        let arrays = [
            ("big", big.clone()),
            ("f32", big.to_dtype(DType::F32).unwrap()),
            ("u8", Tensor::new(&[1u8, 2, 255], &dev).unwrap()),
            ("u32", Tensor::new(&[[7u32, 8], [9, 10]], &dev).unwrap()),
            ("i16", Tensor::new(&[-7i16, 300], &dev).unwrap()),
            ("i32", Tensor::new(&[-70000i32], &dev).unwrap()),
            ("i64", Tensor::new(&[-3i64], &dev).unwrap()),
            ("scalar", Tensor::new(2.5f64, &dev).unwrap()),
        ];
        let refs: Vec<(&str, &Tensor)> = arrays.iter().map(|(n, t)| (*n, t)).collect();
        write_npz(&path, &refs).unwrap();
        let names: Vec<&str> = arrays.iter().map(|(n, _)| *n).collect();
        let back = Tensor::read_npz_by_name(&path, &names).unwrap();
        for ((name, want), got) in arrays.iter().zip(&back) {
            assert_eq!(got.dims(), want.dims(), "{name}");
            assert_eq!(got.dtype(), want.dtype(), "{name}");
            let (g, w) = (
                got.to_dtype(DType::F64).unwrap().flatten_all().unwrap(),
                want.to_dtype(DType::F64).unwrap().flatten_all().unwrap(),
            );
            assert_eq!(
                g.to_vec1::<f64>().unwrap(),
                w.to_vec1::<f64>().unwrap(),
                "{name}"
            );
        }
        let e = write_npz(
            &dir.join("b.npz"),
            &[("x", &big.to_dtype(DType::BF16).unwrap())],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("array x") && e.contains("BF16"), "{e}");
        assert!(!dir.join("b.npz").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
