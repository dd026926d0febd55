//! Helpers shared by Kiln's end-to-end tests and benchmarks.
