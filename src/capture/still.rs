//! Still images (JPEG, PNG) and folders of them, read one after another as frames.
//!
//! Owns expanding directories (non-recursive, sorted, by extension) and reading each file with
//! a size cap. A file that cannot be read or decoded is a counted `Corrupt` skip naming the
//! file; the rest still run. Must not know about streams or cameras.

use super::jpeg::decode_image_into;
use super::{CaptureError, FrameSize, Source};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest still image file we read (bytes).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Whether a file name says JPEG or PNG (how folders of stills are filtered).
pub fn is_image_name(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

/// Expand `inputs` (files and directories) into the list of image files. Files are kept as
/// given (whatever their extension: the decoder checks magic bytes); directories contribute
/// their `*.jpg|*.jpeg|*.png` entries, sorted. A missing path or an empty directory is an error.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image_name(p))
                .collect();
            if found.is_empty() {
                bail!("no JPEG or PNG images in directory {}", p.display());
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Reads a list of still images once, in order.
pub struct StillSource {
    files: Vec<PathBuf>,
    next: usize,
    current: String,
    data: Vec<u8>,
}

impl StillSource {
    pub fn new(files: Vec<PathBuf>) -> Self {
        StillSource {
            files,
            next: 0,
            current: String::new(),
            data: Vec::new(),
        }
    }
}

/// Reads at most [`MAX_FILE_BYTES`] of `path` into `data` (an error past that).
fn read_bounded(path: &Path, data: &mut Vec<u8>) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    data.clear();
    let n = f
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(data)
        .map_err(|e| e.to_string())?;
    if n as u64 > MAX_FILE_BYTES {
        return Err(format!("file larger than {} MiB", MAX_FILE_BYTES >> 20));
    }
    Ok(())
}

/// One still image as `(width, height, RGB8)`, read and decoded exactly as `infer` and `run`
/// do (size cap, the same decoders); the error names the file.
pub fn read_rgb(path: &Path) -> anyhow::Result<(usize, usize, Vec<u8>)> {
    let mut data = Vec::new();
    let mut rgb = Vec::new();
    let size = read_bounded(path, &mut data)
        .and_then(|_| decode_image_into(&data, &mut rgb))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((size.width as usize, size.height as usize, rgb))
}

impl Source for StillSource {
    fn read_frame(&mut self, rgb: &mut Vec<u8>) -> Result<Option<FrameSize>, CaptureError> {
        let Some(path) = self.files.get(self.next).cloned() else {
            return Ok(None);
        };
        self.next += 1;
        self.current = path.display().to_string();
        read_bounded(&path, &mut self.data)
            .and_then(|_| decode_image_into(&self.data, rgb))
            .map(Some)
            .map_err(|e| CaptureError::Corrupt(format!("{}: {e}", self.current)))
    }

    fn is_live(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        match self.files.len() {
            1 => format!("image:{}", self.files[0].display()),
            n => format!("images: {n} files"),
        }
    }

    fn current_file(&self) -> Option<&str> {
        Some(&self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_in_order_and_skips_bad_ones_with_their_name() {
        let dir = std::env::temp_dir().join(format!("expllm-still-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jpg = crate::capture::jpeg::tests::encode_test_jpeg(8, 6, 90);
        std::fs::write(dir.join("a.jpg"), &jpg).unwrap();
        std::fs::write(dir.join("b.png"), b"not really a png").unwrap();
        let img = image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
        img.save(dir.join("c.png")).unwrap();
        std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();

        let files = expand_inputs(std::slice::from_ref(&dir)).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a.jpg", "b.png", "c.png"]);

        let mut src = StillSource::new(files);
        let mut rgb = Vec::new();
        assert_eq!(
            src.read_frame(&mut rgb).unwrap(),
            Some(FrameSize {
                width: 8,
                height: 6
            })
        );
        match src.read_frame(&mut rgb) {
            Err(CaptureError::Corrupt(m)) => assert!(m.contains("b.png"), "{m}"),
            other => panic!("expected a corrupt skip, got {other:?}"),
        }
        rgb.clear();
        assert_eq!(
            src.read_frame(&mut rgb).unwrap(),
            Some(FrameSize {
                width: 3,
                height: 2
            })
        );
        assert_eq!(&rgb[..3], &[1, 2, 3]);
        assert!(src.read_frame(&mut rgb).unwrap().is_none());

        assert!(expand_inputs(&[dir.join("missing.jpg")]).is_err());
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(expand_inputs(&[empty])
            .unwrap_err()
            .to_string()
            .contains("no JPEG or PNG"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
