//! Process-wide allocator tuning for activation-heavy work, and the process's memory as the OS
//! reports it.

/// Tells glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.
///
/// Caching activations allocates fresh memory every run (a full GPT-2-small cache of 8 x 128
/// tokens is about 1 GiB); by default glibc returns freed blocks to the OS and every run then
/// faults the same pages in again, which made `run_with_cache` of every hook 1.3x a forward in
/// our benchmark instead of about 1.0x. After this call the process keeps its peak heap, as
/// PyTorch's CUDA caching allocator does on a GPU. It changes the whole process's allocator,
/// so it is the caller's choice: the `interp` CLI and the benchmarks call it at start-up. Blocks
/// over 32 MiB are still mapped and unmapped on their own. Returns whether the settings took
/// (always false off glibc).
pub fn reuse_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1 && libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Bytes free for an unprivileged user on the file system that holds `dir` (`statvfs`); `None`
/// when it cannot be read (or off Unix).
pub fn free_disk_bytes(dir: &std::path::Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs only writes into the zeroed struct it is given, and `path` is a valid C string.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        Some(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// A field of /proc/self/status in KiB (`VmRSS:` the resident set now, `VmHWM:` its peak so
/// far); NaN off Linux.
pub fn status_kib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_disk_space_is_read_or_none() {
        let free = super::free_disk_bytes(&std::env::temp_dir());
        assert!(free.is_some_and(|f| f > 0), "{free:?}");
        assert_eq!(super::free_disk_bytes(std::path::Path::new("/no/such/folder")), None);
    }
}
