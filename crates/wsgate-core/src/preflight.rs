//! placeholder until the preflight lands
