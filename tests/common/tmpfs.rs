//! A small real file system to fill up: full-disk tests.

/// A tmpfs mounted on a temporary directory, unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Mounts a tmpfs of `megabytes`, or returns None where mounting is not permitted (not
    /// root). As root, a failed mount is a test failure.
    pub fn mount(megabytes: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        if status.as_ref().is_ok_and(|s| s.success()) {
            return Some(Tmpfs { dir });
        }
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
        assert!(!root, "mount -t tmpfs failed as root: {status:?}");
        None
    }

    /// Fills the file system but for about `leave` bytes; returns the filler's path.
    pub fn fill_leaving(&self, leave: u64) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        while file.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        file.set_len(written.saturating_sub(leave)).unwrap();
        file.sync_all().unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
