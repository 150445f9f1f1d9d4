//! Crash points for the tests of crash safety: with `DIALSYNC_FAILPOINT=<name>` in its
//! environment the process kills itself with SIGKILL (as `kill -9` would: no unwinding, no
//! flush) when it reaches the point of that name. Without the variable a point costs one
//! look at the environment.

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
