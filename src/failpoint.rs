//! Crash points for the tests of crash safety: with `DIALSYNC_FAILPOINT=<name>` in its
//! environment the process kills itself with SIGKILL (as `kill -9` would: no unwinding, no
//! flush) when it reaches the point of that name. With `DIALSYNC_FAILPOINT=fail:<name>`,
//! a step that can fail with a full disk fails there as it would (`ENOSPC`), for the tests
//! of what a failed step leaves and reports where no disk can be filled at just that
//! moment. Without the variable a point costs one look at the environment.

/// Reached the point `name`.
pub(crate) fn hit(name: &str) {
    if std::env::var_os("DIALSYNC_FAILPOINT").is_some_and(|v| v == name) {
        // SAFETY: kill and getpid have no preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// At the point `name` of a step that writes: the error a full disk gives, if
/// `DIALSYNC_FAILPOINT` is `fail:<name>`.
pub(crate) fn fail(name: &str) -> std::io::Result<()> {
    let set = std::env::var_os("DIALSYNC_FAILPOINT");
    match set.as_ref().and_then(|v| v.to_str()?.strip_prefix("fail:")) {
        Some(point) if point == name => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        _ => Ok(()),
    }
}
