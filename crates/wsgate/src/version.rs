//! The version `wsgate version` and `--version` print: the crate version and the git
//! revision `build.rs` recorded (`unknown` when the build had no git).

/// The crate version, `0.1.0`.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision, `3f2c1ab`, `3f2c1ab-dirty` or `unknown`.
pub(crate) const GIT_REVISION: &str = env!("WSGATE_GIT_REVISION");
/// Both, as `--version` prints them after the name: `0.1.0 (3f2c1ab)`.
pub(crate) const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("WSGATE_GIT_REVISION"),
    ")"
);
