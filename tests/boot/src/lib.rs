//! QEMU harness for Ferry's boot tests.
