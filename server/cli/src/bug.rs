//! What a user sees when `ferry` panics: one line saying it is a bug, where, and where to
//! report it, then exit status 101, instead of a backtrace (or an abort, in release builds,
//! which use `panic = "abort"`). With `RUST_BACKTRACE` set, the standard report is kept for
//! developers.

/// Where bugs are reported: the workspace's repository.
const REPORT_TO: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "/issues");

/// Installs the hook; call first thing in `main`.
pub fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map_or_else(
            || "an unknown place".to_string(),
            |l| format!("{}:{}", l.file(), l.line()),
        );
        // The panic message is left out: it may quote data (paths, keys) of the job.
        eprintln!(
            "ferry: internal error at {at}: this is a bug in Ferry {}; please report it at {REPORT_TO} with the command you ran (RUST_BACKTRACE=1 shows the details)",
            env!("CARGO_PKG_VERSION")
        );
        // Exit here, before the default unwind or abort: one line, status 101 in every profile.
        std::process::exit(101);
    }));
}

/// Debug builds only: `FERRY_TEST_PANIC=1` panics on purpose, so the tests can check what a
/// user would see.
#[cfg(debug_assertions)]
pub fn test_panic() {
    if std::env::var_os("FERRY_TEST_PANIC").is_some_and(|v| v == "1") {
        panic!("FERRY_TEST_PANIC is set");
    }
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
pub fn test_panic() {}
