//! `cyphonic lab nat-matrix`: NAT traversal on real kernel NAT, end to end
//! (needs root, as CI has).

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_nat_matrix_passes() {
    common::lab_passes("nat-matrix");
}
