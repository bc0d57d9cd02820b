//! A newc (`070701`) cpio archive writer: what the kernel unpacks as an initramfs.

/// An initramfs being built in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn new() -> Self {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    /// A directory (parents must have been added first).
    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    /// A regular file with `mode` permission bits.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | mode, 1, (0, 0), data);
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | 0o600, 1, (major, minor), &[]);
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        let ino = self.ino;
        self.ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so equal inputs give equal archives
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cpio;

    #[test]
    fn newc_headers_are_aligned_and_terminated() {
        let mut c = Cpio::new();
        c.dir("bin");
        c.file("/bin/x", 0o755, b"hello");
        let a = c.finish();
        assert!(a.len().is_multiple_of(4));
        assert!(a.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's size field (7th) is 5.
        let second = text.match_indices("070701").nth(1).unwrap().0;
        assert_eq!(&text[second + 6 + 6 * 8..second + 6 + 7 * 8], "00000005");
    }
}
